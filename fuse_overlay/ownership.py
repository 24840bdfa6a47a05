"""Ownership as the union shows it: uid/gid mappings, squashing and override_stat xattrs.

``uidmapping=CONTAINER:HOST:LEN[:CONTAINER2:HOST2:LEN2...]`` has fuse-overlayfs's meaning: an
owner HOST+k on disk is shown as CONTAINER+k, and the reverse is applied when writing.  The
``user.containers.override_stat`` / ``user.fuseoverlayfs.override_stat`` xattrs hold
``uid:gid:mode[:type]`` (decimal ids, octal mode) as containers/storage writes them when it
cannot chown; they win over the real owner and permission bits.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

__all__ = [
    "OVERRIDE_XATTRS",
    "IdMapping",
    "Override",
    "Ownership",
    "format_override",
    "override_name",
    "parse_override",
]

OVERRIDE_XATTRS = ("user.containers.override_stat", "user.fuseoverlayfs.override_stat")


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One range: ``container`` .. ``container+length`` shown for ``host`` .. ``host+length``."""

    container: int
    host: int
    length: int

    @staticmethod
    def parse_list(text: str) -> tuple[IdMapping, ...]:
        """Parse ``C:H:L[:C:H:L...]`` (fuse-overlayfs also accepts ``,``-free colon lists)."""
        parts = [p for p in text.replace(",", ":").split(":") if p != ""]
        if not parts or len(parts) % 3:
            raise ValueError(f"invalid id mapping {text!r}: expected CONTAINER:HOST:LENGTH triples")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"invalid id mapping {text!r}: ids must be decimal") from None
        return tuple(
            IdMapping(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)
        )


@dataclass(frozen=True, slots=True)
class Override:
    uid: int
    gid: int
    mode: int  # permission bits only (07777)


def parse_override(value: bytes) -> Override | None:
    """Parse an override_stat value; None if it is malformed (ignored, as fuse-overlayfs does)."""
    try:
        fields = value.decode("ascii").strip("\0").split(":")
        return Override(int(fields[0]), int(fields[1]), int(fields[2], 8) & 0o7777)
    except (UnicodeDecodeError, ValueError, IndexError):
        return None


def format_override(uid: int, gid: int, mode: int) -> bytes:
    """The containers/storage form ``uid:gid:0mode`` (permission bits only)."""
    return f"{uid}:{gid}:0{stat.S_IMODE(mode):o}".encode("ascii")


OVERFLOW_ID = 65534


def _map(value: int, ranges: tuple[IdMapping, ...], *, to_container: bool) -> int:
    for r in ranges:
        src, dst = (r.host, r.container) if to_container else (r.container, r.host)
        if src <= value < src + r.length:
            return dst + (value - src)
    return OVERFLOW_ID if to_container else -1


@dataclass(frozen=True, slots=True)
class Ownership:
    """How owners are translated between the disk and the union."""

    uid_map: tuple[IdMapping, ...] = ()
    gid_map: tuple[IdMapping, ...] = ()
    squash_uid: int | None = None
    squash_gid: int | None = None

    @property
    def identity(self) -> bool:
        return (
            not (self.uid_map or self.gid_map)
            and self.squash_uid is None
            and (self.squash_gid is None)
        )

    def shown(self, uid: int, gid: int) -> tuple[int, int]:
        """Owner shown in the union for on-disk owner (uid, gid)."""
        if self.uid_map:
            uid = _map(uid, self.uid_map, to_container=True)
        if self.gid_map:
            gid = _map(gid, self.gid_map, to_container=True)
        if self.squash_uid is not None:
            uid = self.squash_uid
        if self.squash_gid is not None:
            gid = self.squash_gid
        return uid, gid

    def on_disk(self, uid: int, gid: int) -> tuple[int, int]:
        """On-disk owner for an owner set through the union; -1 stays -1 (unchanged)."""
        if self.uid_map and uid != -1:
            uid = _map(uid, self.uid_map, to_container=False)
        if self.gid_map and gid != -1:
            gid = _map(gid, self.gid_map, to_container=False)
        return uid, gid


def override_name(real: str | int) -> str:
    """The override_stat xattr *real* already carries, else containers/storage's name."""
    for name in OVERRIDE_XATTRS:
        try:
            os.getxattr(real, name)
            return name
        except OSError:
            continue
    return OVERRIDE_XATTRS[0]
