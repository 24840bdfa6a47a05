"""Published ports: a user-space forwarder, as rootlesskit's builtin port driver.

The monitor listens on the host; for each accepted connection it asks a *socket factory* for a
fresh socket of the container's network namespace and connects it to ``127.0.0.1:PORT`` there
(a socket belongs to the namespace it was created in, whoever uses it later). The factory is a
forked child of the (single-threaded) monitor that joined the container's user and network
namespaces and hands sockets back over ``SCM_RIGHTS``. Bytes are relayed with ``splice(2)``
through a pipe (zero copy) in the monitor's event loop.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.errors import SandboxError, SpecError

__all__ = ["PortBinding", "parse_publish", "SocketFactory", "Forwarder", "bind_listeners"]

_CHUNK = 1 << 18


@dataclass(frozen=True)
class PortBinding:
    """``-p [ip:][host_port:]container_port[/proto]``; ``host_port`` 0 means a random one."""

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.proto}"


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise SpecError(f"invalid {what} port {text!r}", hint="use a number 1-65535")
    return int(text)


def parse_publish(text: str) -> list[PortBinding]:
    """Docker's ``-p`` shapes, including ranges (``8000-8001:80-81``)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise SpecError(f"invalid protocol {proto!r} in {text!r}", hint="use tcp or udp")
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:.]+\]|[0-9.]*):)??(?:([0-9-]*):)?([0-9-]+)", spec)
    if m is None:
        raise SpecError(f"invalid port specification {text!r}",
                        hint="use -p [ip:][hostPort:]containerPort[/tcp|udp]")
    ip, host, ctr = m.group(1) or "", m.group(2) or "", m.group(3)
    ip = ip.strip("[]")
    c_lo, _, c_hi = ctr.partition("-")
    c_range = range(_port(c_lo, "container"), _port(c_hi or c_lo, "container") + 1)
    if host:
        h_lo, _, h_hi = host.partition("-")
        h_start = _port(h_lo, "host")
        h_end = _port(h_hi or h_lo, "host")
        if h_end - h_start != len(c_range) - 1 and h_start != 0:
            raise SpecError(f"invalid ranges in {text!r}: host and container ranges differ")
        h_ports = [h_start + i if h_start else 0 for i in range(len(c_range))]
    else:
        h_ports = [0] * len(c_range)
    return [PortBinding(c, proto, ip, h) for c, h in zip(c_range, h_ports, strict=True)]


def bind_listeners(bindings: list[dict[str, object]]) -> list[tuple[socket.socket, dict[str,
                                                                                        object]]]:
    """Bind each published port on the host; the dicts get the real ``host_port``."""
    out = []
    try:
        for b in bindings:
            ip = str(b.get("host_ip") or "0.0.0.0")
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            kind = socket.SOCK_DGRAM if b.get("proto") == "udp" else socket.SOCK_STREAM
            s = socket.socket(family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, int(str(b.get("host_port") or 0))))
            except OSError as exc:
                s.close()
                raise SandboxError(f"cannot publish port {b.get('container_port')}: bind "
                                   f"{ip}:{b.get('host_port')}: {exc.strerror}",
                                   hint="choose another host port") from None
            if kind == socket.SOCK_STREAM:
                s.listen(128)
            s.setblocking(False)
            out.append((s, {**b, "host_ip": ip, "host_port": s.getsockname()[1]}))
    except BaseException:
        for s, _ in out:
            s.close()
        raise
    return out


class SocketFactory:
    """A child in the container's user+net namespaces that makes sockets there."""

    def __init__(self, init_pid: int) -> None:
        from sandbox import _syscalls as sc

        fds = [os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
               for ns in ("user", "net")]
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                self.sock.close()
                sc.set_pdeathsig(signal.SIGKILL)
                sc.setns(fds[0], sc.CLONE_NEWUSER)
                sc.setns(fds[1], sc.CLONE_NEWNET)
                _serve(child)
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        for fd in fds:
            os.close(fd)
        child.close()

    def make(self, family: int, kind: int) -> socket.socket:
        self.sock.send(f"{int(family)} {int(kind)}".encode())
        msg, fds, _, _ = socket.recv_fds(self.sock, 16, 1)
        if not fds:
            raise OSError(errno.EIO, "the socket factory failed")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        from sandbox._sig import kill_and_reap

        self.sock.close()
        kill_and_reap(self.pid, signal.SIGKILL)


def _serve(sock: socket.socket) -> None:  # pragma: no cover - runs in the factory child
    while True:
        req = sock.recv(32)
        if not req:
            return
        family, kind = (int(x) for x in req.split())
        s = socket.socket(family, kind)
        try:
            socket.send_fds(sock, [b"S"], [s.fileno()])
        finally:
            s.close()


class _Pipe:
    """One direction of a TCP relay: ``src`` → pipe → ``dst`` with splice."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import fcntl

            fcntl.fcntl(self.w, 1031, _CHUNK)  # F_SETPIPE_SZ
        except OSError:
            pass
        self.buffered = 0
        self.eof = False

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class Forwarder:
    """Accepts on the host listeners and relays to the container, inside a selector loop."""

    def __init__(self, sel: selectors.BaseSelector, factory: SocketFactory,
                 listeners: list[tuple[socket.socket, dict[str, object]]]) -> None:
        self.sel = sel
        self.factory = factory
        self.listeners = listeners
        self.conns: dict[int, tuple[_Pipe, _Pipe]] = {}
        self.udp: dict[tuple[int, object], socket.socket] = {}
        for lsock, b in listeners:
            port = int(str(b["container_port"]))
            if lsock.type == socket.SOCK_STREAM:
                sel.register(lsock, selectors.EVENT_READ, self._acceptor(lsock, port))
            else:
                sel.register(lsock, selectors.EVENT_READ, self._udp_in(lsock, port))

    def _acceptor(self, lsock: socket.socket, port: int) -> Callable[[int], None]:
        def accept(_mask: int) -> None:
            try:
                client, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                inner = self.factory.make(socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                client.close()
                return
            try:
                inner.connect(("127.0.0.1", port))
            except OSError:
                client.close()
                inner.close()
                return
            for s in (client, inner):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up, down = _Pipe(client, inner), _Pipe(inner, client)
            self.conns[client.fileno()] = (up, down)
            self._watch(up)
            self._watch(down)
        return accept

    def _watch(self, p: _Pipe) -> None:
        self._set(p.src, selectors.EVENT_READ, p)

    def _set(self, s: socket.socket, ev: int, p: _Pipe) -> None:
        # each socket is the src of one pipe and the dst of the other: merge interests
        try:
            key = self.sel.get_key(s)
            handlers: dict[int, _Pipe] = key.data.handlers
            handlers[ev] = p
            events = 0
            for e in handlers:
                events |= e
            self.sel.modify(s, events, key.data)
        except KeyError:
            data = _Handlers(self, s)
            data.handlers[ev] = p
            self.sel.register(s, ev, data)

    def _unset(self, s: socket.socket, ev: int) -> None:
        try:
            key = self.sel.get_key(s)
        except (KeyError, ValueError):
            return
        handlers = key.data.handlers
        handlers.pop(ev, None)
        if handlers:
            events = 0
            for e in handlers:
                events |= e
            self.sel.modify(s, events, key.data)
        else:
            self.sel.unregister(s)

    def pump(self, p: _Pipe) -> None:
        """Move what can move; drives both the read and the write side of ``p``."""
        while True:
            if p.buffered:
                try:
                    n = os.splice(p.r, p.dst.fileno(), p.buffered, flags=_SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    self._set(p.dst, selectors.EVENT_WRITE, p)
                    self._unset(p.src, selectors.EVENT_READ)
                    return
                except OSError:
                    self._close(p)
                    return
                p.buffered -= n
                if p.buffered:
                    continue
                self._unset(p.dst, selectors.EVENT_WRITE)
                self._set(p.src, selectors.EVENT_READ, p)
            if p.eof:
                try:
                    p.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._unset(p.src, selectors.EVENT_READ)
                self._maybe_done(p)
                return
            try:
                n = os.splice(p.src.fileno(), p.w, _CHUNK, flags=_SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return
            except OSError:
                self._close(p)
                return
            if n == 0:
                p.eof = True
                continue
            p.buffered += n

    def _maybe_done(self, p: _Pipe) -> None:
        for key, pair in list(self.conns.items()):
            if p in pair and all(x.eof and not x.buffered for x in pair):
                self._drop(key, pair)

    def _close(self, p: _Pipe) -> None:
        for key, pair in list(self.conns.items()):
            if p in pair:
                self._drop(key, pair)

    def _drop(self, key: int, pair: tuple[_Pipe, _Pipe]) -> None:
        del self.conns[key]
        for s in (pair[0].src, pair[1].src):
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        for x in pair:
            x.close()

    # -- udp: one inner socket per client address ------------------------------------------
    def _udp_in(self, lsock: socket.socket, port: int) -> Callable[[int], None]:
        def recv(_mask: int) -> None:
            try:
                data, addr = lsock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            key = (lsock.fileno(), addr)
            inner = self.udp.get(key)
            if inner is None:
                try:
                    inner = self.factory.make(socket.AF_INET, socket.SOCK_DGRAM)
                    inner.connect(("127.0.0.1", port))
                except OSError:
                    return
                inner.setblocking(False)
                self.udp[key] = inner

                def back(_m: int, inner: socket.socket = inner, addr: Any = addr) -> None:
                    try:
                        lsock.sendto(inner.recv(65535), addr)
                    except OSError:
                        pass
                self.sel.register(inner, selectors.EVENT_READ, back)
            try:
                inner.send(data)
            except OSError:
                pass
        return recv

    def close(self) -> None:
        for key, pair in list(self.conns.items()):
            self._drop(key, pair)
        for s in self.udp.values():
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        for lsock, _ in self.listeners:
            try:
                self.sel.unregister(lsock)
            except (KeyError, ValueError):
                pass
            lsock.close()


_SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)


class _Handlers:
    """Selector data for a relay socket: which pipe to pump on read and on write."""

    def __init__(self, fwd: Forwarder, sock: socket.socket) -> None:
        self.fwd = fwd
        self.sock = sock
        self.handlers: dict[int, _Pipe] = {}

    def __call__(self, mask: int) -> None:
        for ev in (selectors.EVENT_WRITE, selectors.EVENT_READ):
            if mask & ev and ev in self.handlers:
                p = self.handlers[ev]
                if p.src.fileno() < 0:
                    return
                self.fwd.pump(p)
