"""The client half of ``attach`` (and ``start -a``, ``run`` of a monitored container).

Connects to the monitor's ``attach.sock`` (see ``sandbox._monitor.AttachServer``), relays the
framed output to our stdout/stderr and our stdin to the container. With a tty, our terminal is
put in raw mode and the detach keys (ctrl-p ctrl-q, Docker's default) leave the container
running.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
from typing import Any

__all__ = ["attach_client", "DETACHED", "GONE"]

DETACHED = -1
GONE = -2  # the run ended before we were attached: its output is in the log
_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q


def _connect(cdir: str) -> socket.socket:
    fd = os.open(cdir, os.O_PATH | os.O_CLOEXEC)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(f"/proc/self/fd/{fd}/attach.sock")
        return s
    finally:
        os.close(fd)


def _winsize() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(0)
        return size.lines, size.columns
    except OSError:
        return 0, 0


def attach_client(cdir: str, *, stdin: bool, tty: bool, detach_keys: bytes = _DETACH_KEYS,
                  replay: bool = False) -> int:
    """Relay until the container's output ends (returns 0) or the user detaches (DETACHED).

    With ``replay`` the output of the current run so far comes first; a run that is already over
    gives GONE (with ``replay`` only: then the caller reads the log instead).
    """
    try:
        sock = _connect(cdir)
    except (FileNotFoundError, ConnectionRefusedError):
        if replay:
            return GONE
        raise
    rows, cols = _winsize() if tty else (0, 0)
    hello = {"stdin": stdin, "rows": rows, "cols": cols, "replay": replay}
    try:
        sock.sendall(json.dumps(hello).encode() + b"\n")
    except OSError:
        sock.close()
        if replay:
            return GONE
        raise
    saved = None
    if tty and stdin and os.isatty(0):
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(0)
        ttymod.setraw(0)
    try:
        code = _relay(sock, stdin, detach_keys if tty else b"")
        return code if code != GONE or replay else 0
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        sock.close()


def _relay(sock: socket.socket, stdin: bool, detach_keys: bytes) -> int:
    buf = b""
    watch: list[Any] = [sock] + ([0] if stdin else [])
    matched = b""
    attached = False
    while True:
        try:
            ready, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        if sock in ready:
            try:
                data = sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                return 0 if attached else GONE
            buf += data
            while len(buf) >= 5:
                stream, length = struct.unpack(">BI", buf[:5])
                if len(buf) < 5 + length:
                    break
                payload, buf = buf[5:5 + length], buf[5 + length:]
                if stream == 0:
                    attached = True
                else:
                    os.write(1 if stream == 1 else 2, payload)
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                watch.remove(0)
                sock.shutdown(socket.SHUT_WR)
                continue
            if detach_keys:
                out = b""
                for byte in data:
                    ch = bytes([byte])
                    if ch == detach_keys[len(matched):len(matched) + 1]:
                        matched += ch
                        if matched == detach_keys:
                            return DETACHED
                        continue
                    out += matched + ch
                    matched = b""
                data = out
            if data:
                sock.sendall(data)
