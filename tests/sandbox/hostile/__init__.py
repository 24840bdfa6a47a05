"""A corpus of hostile layer tars, built by code (no binary files in git).

Each case is a ``HostileCase``: a name, a function that writes the tar into a directory and
returns its path, and the ``UnsafeLayerMember`` subclass (or other error) unpacking must raise.
``outside`` is the directory a successful attack would write into; tests check it stays as it was.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.errors import (
    AbsoluteLinkError,
    OutsideDestinationError,
    SandboxError,
    SpecialFileError,
)

__all__ = ["HostileCase", "CASES", "tar_bytes", "member", "raw_header"]


def member(name: str, typ: bytes = tarfile.REGTYPE, *, data: bytes = b"", linkname: str = "",
           mode: int = 0o644, pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = typ
    info.mode = mode
    info.linkname = linkname
    info.size = len(data) if typ in tarfile.REGULAR_TYPES else 0
    info.mtime = 1_700_000_000
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]],
              fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


def raw_header(name: str, *, size_field: bytes, typ: bytes = tarfile.REGTYPE) -> bytes:
    """A ustar header with a hand-made size field (base-256 for negatives) and a good checksum."""
    info = tarfile.TarInfo(name)
    info.type = typ
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = size_field
    block[148:156] = b" " * 8
    chksum = sum(block[:512])
    block[148:156] = b"%06o\x00 " % chksum
    return bytes(block)


def _negative_size() -> bytes:
    field = b"\xff" + b"\xff" * 10 + b"\x00"  # base-256: -256
    return raw_header("neg", size_field=field) + bytes(1024)


def _huge_size() -> bytes:
    field = b"%011o\x00" % (8**11 - 1)  # ~8 GiB announced, 512 bytes present
    return raw_header("huge", size_field=field) + b"x" * 512 + bytes(1024)


def _huge_pax_header() -> bytes:
    field = b"%011o\x00" % (1 << 33)  # an 8 GiB PAX extended header block
    return raw_header("pax", size_field=field, typ=tarfile.XHDTYPE) + bytes(4096)


def _unknown_type() -> bytes:
    return raw_header("vol", size_field=b"%011o\x00" % 0, typ=b"V") + bytes(1024)


@dataclass(frozen=True)
class HostileCase:
    name: str
    build: Callable[[str], bytes]  # receives the absolute path of "outside"
    error: type[SandboxError]


def _m(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return tar_bytes(list(members), fmt)


CASES: list[HostileCase] = [
    HostileCase("dotdot", lambda out: _m(member("../outside/evil", data=b"x")),
                OutsideDestinationError),
    HostileCase("dotdot-nested", lambda out: _m(member("a/../../outside/evil", data=b"x")),
                OutsideDestinationError),
    HostileCase("dotdot-after-root", lambda out: _m(member("/../outside/evil", data=b"x")),
                OutsideDestinationError),
    HostileCase("dotdot-gnu-longname",
                lambda out: _m(member("../" + "x" * 200, data=b"x"), fmt=tarfile.GNU_FORMAT),
                OutsideDestinationError),
    HostileCase("symlink-then-write",
                lambda out: _m(member("link", tarfile.SYMTYPE, linkname="../outside"),
                               member("link/evil", data=b"x")),
                OutsideDestinationError),
    HostileCase("abs-symlink-then-child",
                lambda out: _m(member("link", tarfile.SYMTYPE, linkname=out),
                               member("link/evil", data=b"x")),
                OutsideDestinationError),
    HostileCase("abs-symlink-then-dir",
                lambda out: _m(member("link", tarfile.SYMTYPE, linkname=out),
                               member("link/sub", tarfile.DIRTYPE, mode=0o755)),
                OutsideDestinationError),
    HostileCase("symlink-then-whiteout",
                lambda out: _m(member("link", tarfile.SYMTYPE, linkname=out),
                               member("link/.wh.sentinel")),
                OutsideDestinationError),
    HostileCase("symlink-then-opaque",
                lambda out: _m(member("link", tarfile.SYMTYPE, linkname=out),
                               member("link/.wh..wh..opq")),
                OutsideDestinationError),
    HostileCase("hardlink-out",
                lambda out: _m(member("h", tarfile.LNKTYPE, linkname="../outside/sentinel")),
                OutsideDestinationError),
    HostileCase("hardlink-absolute",
                lambda out: _m(member("h", tarfile.LNKTYPE, linkname=out + "/sentinel")),
                AbsoluteLinkError),
    HostileCase("hardlink-through-symlink",
                lambda out: _m(member("link", tarfile.SYMTYPE, linkname=out),
                               member("h", tarfile.LNKTYPE, linkname="link/sentinel")),
                OutsideDestinationError),
    HostileCase("hardlink-to-dir",
                lambda out: _m(member("d", tarfile.DIRTYPE, mode=0o755),
                               member("h", tarfile.LNKTYPE, linkname="d")),
                SpecialFileError),
    HostileCase("hardlink-to-root",
                lambda out: _m(member("h", tarfile.LNKTYPE, linkname=".")),
                SpecialFileError),
    HostileCase("hardlink-not-yet-extracted",
                lambda out: _m(member("h", tarfile.LNKTYPE, linkname="later"),
                               member("later", data=b"x")),
                SpecialFileError),
    HostileCase("whiteout-dotdot", lambda out: _m(member("a/.wh...")), OutsideDestinationError),
    HostileCase("whiteout-dot", lambda out: _m(member("a/.wh..")), OutsideDestinationError),
    HostileCase("whiteout-empty", lambda out: _m(member("a/.wh.")), OutsideDestinationError),
    HostileCase("inside-whiteout", lambda out: _m(member(".wh.a/evil", data=b"x")),
                SpecialFileError),
    HostileCase("nul-in-pax-path",
                lambda out: _m(member("ok", data=b"x", pax={"path": "a\x00b"})),
                SpecialFileError),
    HostileCase("nul-in-pax-linkpath",
                lambda out: _m(member("l", tarfile.SYMTYPE, pax={"linkpath": "/x\x00y"})),
                SpecialFileError),
    HostileCase("negative-size", lambda out: _negative_size(), SpecialFileError),
    HostileCase("huge-size", lambda out: _huge_size(), SpecialFileError),
    HostileCase("huge-pax-header", lambda out: _huge_pax_header(), SpecialFileError),
    HostileCase("unknown-type", lambda out: _unknown_type(), SpecialFileError),
    HostileCase("root-as-symlink",
                lambda out: _m(member(".", tarfile.SYMTYPE, linkname=out)), SpecialFileError),
    HostileCase("deep-nesting", lambda out: _m(member("d/" * 5000 + "f", data=b"x")),
                SpecialFileError),
    HostileCase("file-then-child",
                lambda out: _m(member("f", data=b"x"), member("f/evil", data=b"x")),
                SpecialFileError),
]
