"""Progress reporting for pull and push, rendered like ``docker pull``.

The registry client calls a ``Progress`` (a protocol, thread-safe by contract); the CLI picks a
renderer: ``TtyProgress`` redraws one bar per layer in place, ``LineProgress`` writes one line
per event (``<short id>: Pull complete``). Both write only to the stream they are given.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, TextIO

__all__ = ["Progress", "NullProgress", "LineProgress", "TtyProgress", "make_progress",
           "short_id", "human_size"]


class Progress(Protocol):
    """Callbacks from the registry client; may be called from several threads."""

    def start(self, digest: str, size: int | None, status: str) -> None:
        """A blob transfer begins (``status``: Downloading, Pushing, Waiting ...)."""

    def update(self, digest: str, done: int) -> None:
        """``done`` bytes of the blob have been transferred so far."""

    def finish(self, digest: str, status: str) -> None:
        """The blob is done: Pull complete, Already exists, Pushed, Mounted from X ..."""


class NullProgress:
    """Reports nothing."""

    def start(self, digest: str, size: int | None, status: str) -> None:
        pass

    def update(self, digest: str, done: int) -> None:
        pass

    def finish(self, digest: str, status: str) -> None:
        pass


def short_id(digest: str) -> str:
    """The 12-hex-digit form Docker prints."""
    return digest.partition(":")[2][:12] or digest[:12]


def human_size(n: float) -> str:
    """``1.5MB`` style (decimal units, as Docker prints)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"  # pragma: no cover


class LineProgress:
    """One line per start and finish (no per-chunk noise): for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def start(self, digest: str, size: int | None, status: str) -> None:
        extra = f" ({human_size(size)})" if size else ""
        self._write(f"{short_id(digest)}: {status}{extra}")

    def update(self, digest: str, done: int) -> None:
        pass

    def finish(self, digest: str, status: str) -> None:
        self._write(f"{short_id(digest)}: {status}")


class TtyProgress:
    """Docker-style bars, one line per blob, redrawn in place with ANSI cursor movement."""

    BAR_WIDTH = 50

    def __init__(self, stream: TextIO, *, min_interval: float = 0.1) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._lines: dict[str, str] = {}
        self._sizes: dict[str, int | None] = {}
        self._drawn = 0
        self._last = 0.0
        self._min_interval = min_interval

    def render_line(self, digest: str, done: int | None, status: str) -> str:
        """The text of one blob's line, e.g. ``abc: Downloading [==>   ]  1.2MB/3MB``."""
        size = self._sizes.get(digest)
        head = f"{short_id(digest)}: {status}"
        if done is None:
            return head
        if not size:
            return f"{head}  {human_size(done)}"
        filled = min(self.BAR_WIDTH, done * self.BAR_WIDTH // size)
        bar = "=" * filled + (">" if filled < self.BAR_WIDTH else "")
        return f"{head} [{bar:<{self.BAR_WIDTH}}] {human_size(done)}/{human_size(size)}"

    def _redraw(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._min_interval:
            return
        self._last = now
        out = [f"\x1b[{self._drawn}A"] if self._drawn else []
        out += [f"\x1b[2K{self._lines[d]}\n" for d in self._order]
        self._drawn = len(self._order)
        self._stream.write("".join(out))
        self._stream.flush()

    def start(self, digest: str, size: int | None, status: str) -> None:
        with self._lock:
            if digest not in self._lines:
                self._order.append(digest)
            self._sizes[digest] = size
            self._lines[digest] = self.render_line(digest, None, status)
            self._redraw(True)

    def update(self, digest: str, done: int) -> None:
        with self._lock:
            status = "Pushing" if "Pushing" in self._lines.get(digest, "") else "Downloading"
            self._lines[digest] = self.render_line(digest, done, status)
            self._redraw(False)

    def finish(self, digest: str, status: str) -> None:
        with self._lock:
            if digest not in self._lines:
                self._order.append(digest)
            self._lines[digest] = self.render_line(digest, None, status)
            self._redraw(True)


def make_progress(stream: TextIO, *, quiet: bool = False) -> Progress:
    """Bars on a terminal, lines otherwise, nothing when ``quiet``."""
    if quiet:
        return NullProgress()
    isatty = getattr(stream, "isatty", None)
    return TtyProgress(stream) if isatty is not None and isatty() else LineProgress(stream)
