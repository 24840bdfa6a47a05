"""The runtime's control sockets on ``_socket``, without the ``socket`` module.

``socket`` converts its constants into ``IntEnum`` classes and imports ``selectors`` on import:
a measurable share of ``sandbox run``'s start-up. The runtime needs a Unix socket pair,
``SCM_RIGHTS`` fd passing (``socket.send_fds``/``recv_fds``, same shapes) and ``sethostname``.
"""

from __future__ import annotations

import _socket
import os
from _socket import AF_INET, AF_UNIX, SOCK_DGRAM, SOCK_SEQPACKET, sethostname

from sandbox._syscalls import pack_ints, unpack_ints

__all__ = ["Socket", "socketpair", "send_fds", "recv_fds", "sethostname", "from_fd",
           "set_inheritable", "AF_INET", "AF_UNIX", "SOCK_DGRAM", "SOCK_SEQPACKET", "udp"]

Socket = _socket.socket


def socketpair(family: int = AF_UNIX, kind: int = SOCK_SEQPACKET) -> tuple[Socket, Socket]:
    """A connected pair, close-on-exec."""
    return _socket.socketpair(family, kind, 0)


def udp() -> Socket:
    return _socket.socket(AF_INET, SOCK_DGRAM, 0)


def from_fd(fd: int) -> Socket:
    return _socket.socket(fileno=fd)


def set_inheritable(sock: Socket, inheritable: bool) -> None:
    os.set_inheritable(sock.fileno(), inheritable)


def send_fds(sock: Socket, buffers: list[bytes], fds: list[int]) -> int:
    return sock.sendmsg(buffers, [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                   pack_ints(fds))])


def recv_fds(sock: Socket, bufsize: int, maxfds: int,
             flags: int = 0) -> tuple[bytes, list[int], int, object]:
    # not array: importing array imports collections (a millisecond of every run)
    msg, ancdata, flags, addr = sock.recvmsg(bufsize, _socket.CMSG_LEN(maxfds * 4), flags)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += unpack_ints(data)
    return msg, fds, flags, addr
