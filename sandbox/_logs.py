"""The json-file log of a container, as Docker's ``json-file`` driver writes it.

One JSON object a line: ``{"log": "text\\n", "stream": "stdout"|"stderr", "time": RFC3339}``.
Bytes that are not UTF-8 survive through ``surrogateescape`` (JSON escapes the surrogates).
Lines longer than 16 KiB are split, as Docker splits them. ``max_size`` caps the file: it is
rotated to ``log.json.1`` … ``log.json.N`` (``max_file``), oldest dropped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import BinaryIO

from sandbox._cstate import parse_time, rfc3339

__all__ = ["LogWriter", "read_log", "DEFAULT_MAX_SIZE", "DEFAULT_MAX_FILE", "parse_size",
           "parse_since"]

DEFAULT_MAX_SIZE = 20 * 1024 * 1024
DEFAULT_MAX_FILE = 2
_MAX_LINE = 16 * 1024


def parse_size(text: str) -> int:
    """``10m``, ``512k``, ``1g`` or a byte count."""
    units = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    text = text.strip().lower().rstrip("b") or "0"
    try:
        if text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except OverflowError:  # 1e999m: ValueError, as any size that is not one
        raise ValueError(f"size out of range: {text}") from None


class LogWriter:
    """Line-buffers two streams into the json-file log; rotates at ``max_size``."""

    def __init__(self, path: str, *, max_size: int = DEFAULT_MAX_SIZE,
                 max_file: int = DEFAULT_MAX_FILE) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max(1, max_file)
        self._pending = {"stdout": b"", "stderr": b""}
        self._f = open(path, "ab")
        self._size = self._f.tell()

    def write(self, stream: str, data: bytes) -> None:
        buf = self._pending[stream] + data
        while True:
            nl = buf.find(b"\n")
            if nl < 0 or nl >= _MAX_LINE:
                if len(buf) >= _MAX_LINE:
                    self._emit(stream, buf[:_MAX_LINE])
                    buf = buf[_MAX_LINE:]
                    continue
                break
            self._emit(stream, buf[:nl + 1])
            buf = buf[nl + 1:]
        self._pending[stream] = buf

    def flush(self) -> None:
        """Write out partial lines (at the end of the container)."""
        for stream, buf in self._pending.items():
            if buf:
                self._emit(stream, buf)
        self._pending = {"stdout": b"", "stderr": b""}
        self._f.flush()

    def _emit(self, stream: str, line: bytes) -> None:
        rec = json.dumps({"log": line.decode("utf-8", "surrogateescape"), "stream": stream,
                          "time": rfc3339()}).encode() + b"\n"
        if self.max_size and self._size + len(rec) > self.max_size and self._size:
            self._rotate()
        self._f.write(rec)
        self._f.flush()
        self._size += len(rec)

    def _rotate(self) -> None:
        self._f.close()
        if self.max_file > 1:
            for i in range(self.max_file - 1, 0, -1):
                src = self.path if i == 1 else f"{self.path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i}")
        else:
            os.unlink(self.path)
        self._f = open(self.path, "ab")
        self._size = 0

    def close(self) -> None:
        self.flush()
        self._f.close()


def parse_since(text: str | float | None, now: float | None = None) -> float | None:
    """Docker's ``--since``/``--until``: a Unix time, an RFC 3339 time or a duration (``10m``)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    return parse_time(text if "T" in text else text + "T00:00:00")


def _records(path: str, current: BinaryIO | None) -> tuple[list[bytes], bytes]:
    """Every record of the rotated files, then of ``current`` (the open log) to its end.

    Returns the records and a trailing partial line. Reading the live file through the handle
    the follower goes on with means no line written in between is lost.
    """
    out: list[bytes] = []
    olds = sorted((p for p in _rotated(path)), key=lambda p: -int(p.rsplit(".", 1)[1]))
    for p in olds:
        try:
            with open(p, "rb") as f:
                out += f.read().splitlines()
        except FileNotFoundError:
            continue
    if current is None:
        return out, b""
    *lines, partial = current.read().split(b"\n")
    return out + lines, partial


def _rotated(path: str) -> list[str]:
    d, base = os.path.split(path)
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return [os.path.join(d, n) for n in names
            if n.startswith(base + ".") and n.rsplit(".", 1)[1].isdigit()]


def _decode(raw: bytes) -> tuple[str, bytes, str] | None:
    try:
        rec = json.loads(raw)
        return rec["stream"], rec["log"].encode("utf-8", "surrogateescape"), rec["time"]
    except (ValueError, KeyError, AttributeError):
        return None


def read_log(path: str, *, streams: tuple[str, ...] = ("stdout", "stderr"),
             tail: int | None = None, since: float | None = None, until: float | None = None,
             follow: bool = False, timestamps: bool = False,
             running: object = None) -> Iterator[tuple[str, bytes]]:
    """``(stream, line)`` pairs; with ``follow`` keeps reading while ``running()`` is true."""
    def keep(item: tuple[str, bytes, str]) -> bool:
        if item[0] not in streams:
            return False
        if since is not None or until is not None:
            t = parse_time(item[2])
            if since is not None and t < since:
                return False
            if until is not None and t > until:
                return False
        return True

    def shape(item: tuple[str, bytes, str]) -> tuple[str, bytes]:
        return (item[0], (item[2].encode() + b" " + item[1]) if timestamps else item[1])

    try:
        f: BinaryIO | None = open(path, "rb")
    except FileNotFoundError:
        f = None
    try:
        records, partial = _records(path, f)
        items = [d for d in (_decode(r) for r in records) if d is not None and keep(d)]
        if tail is not None and tail >= 0:
            items = items[len(items) - tail:] if tail else []
        for item in items:
            yield shape(item)
        if follow and f is not None:
            yield from _follow(path, f, partial, keep, shape, running)
    finally:
        if f is not None:
            f.close()


def _follow(path: str, f: BinaryIO, partial: bytes, keep: object, shape: object,
            running: object) -> Iterator[tuple[str, bytes]]:
    """Go on reading ``f`` from where the history stopped, across rotations."""
    assert callable(keep) and callable(shape) and callable(running)
    inode = os.fstat(f.fileno()).st_ino
    idle_after_stop = 0
    try:
        while True:
            chunk = f.read()
            if chunk:
                partial += chunk
                *lines, partial = partial.split(b"\n")
                for raw in lines:
                    item = _decode(raw)
                    if item is not None and keep(item):
                        yield shape(item)
                continue
            try:
                if os.stat(path).st_ino != inode:  # rotated: go on in the new file
                    f.close()
                    f = open(path, "rb")
                    inode = os.fstat(f.fileno()).st_ino
                    continue
            except FileNotFoundError:
                return
            if not running():
                idle_after_stop += 1
                if idle_after_stop > 2:
                    return
            time.sleep(0.05)
    finally:
        f.close()
