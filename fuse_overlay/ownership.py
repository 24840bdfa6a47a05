"""Ownership as the union shows it: uid/gid mappings, squashing and override_stat xattrs.

``uidmapping=DISK:UNION:LEN[:DISK2:UNION2:LEN2...]`` has fuse-overlayfs's meaning (its man page
``UID:MAPPED-UID:LEN``, ``find_mapping``): an owner DISK+k on disk is shown as UNION+k, and an
owner UNION+k set through the union (chown, a new file's creator) is stored as DISK+k.  Ids
outside every range are shown as the kernel's overflow id (65534); setting one is refused.
containers/storage passes ``ContainerID:HostID:Size`` triples: its layers hold the container's
ids, and the mount shows the ids the server's namespace knows them by.

The ``user.containers.override_stat`` / ``user.fuseoverlayfs.override_stat`` xattrs hold
``uid:gid:mode[:type]`` (decimal ids, octal mode) as containers/storage writes them when it
cannot chown; they win over the real owner and permission bits.  Their ids are on-disk ids: the
mapping applies to them exactly as to a real owner, and what chown stores there is mapped back.
``squash_to_root`` / ``squash_to_uid`` / ``squash_to_gid`` change only what is shown.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

__all__ = [
    "OVERRIDE_XATTRS",
    "OVERFLOW_GID",
    "OVERFLOW_UID",
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
    """One range: on-disk ids ``disk`` .. ``disk+length`` shown as ``union`` .. ``union+length``."""

    disk: int
    union: int
    length: int

    @staticmethod
    def parse_list(text: str) -> tuple[IdMapping, ...]:
        """Parse ``D:U:L[:D:U:L...]`` (fuse-overlayfs also accepts ``,`` between triples)."""
        parts = [p for p in text.replace(",", ":").split(":") if p != ""]
        if not parts or len(parts) % 3:
            raise ValueError(f"invalid id mapping {text!r}: expected ID:MAPPED-ID:LENGTH triples")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"invalid id mapping {text!r}: ids must be decimal") from None
        if any(n < 0 for n in numbers):
            raise ValueError(f"invalid id mapping {text!r}: ids must not be negative")
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


def _overflow_id(kind: str) -> int:
    """The kernel's overflow uid/gid: how an unmapped owner looks (fuse-overlayfs reads it too)."""
    try:
        with open(f"/proc/sys/kernel/overflow{kind}", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 65534


OVERFLOW_UID = _overflow_id("uid")
OVERFLOW_GID = _overflow_id("gid")


# fuse-overlayfs searches its ranges last one first: the same here, should two overlap
def _to_union(value: int, ranges: tuple[IdMapping, ...], overflow: int) -> int:
    for r in reversed(ranges):
        if r.disk <= value < r.disk + r.length:
            return r.union + (value - r.disk)
    return overflow


def _to_disk(value: int, ranges: tuple[IdMapping, ...]) -> int:
    for r in reversed(ranges):
        if r.union <= value < r.union + r.length:
            return r.disk + (value - r.union)
    return -1


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

    @property
    def squashed(self) -> bool:
        return self.squash_uid is not None or self.squash_gid is not None

    def shown(self, uid: int, gid: int) -> tuple[int, int]:
        """Owner shown in the union for on-disk owner (uid, gid)."""
        if self.uid_map:
            uid = _to_union(uid, self.uid_map, OVERFLOW_UID)
        if self.gid_map:
            gid = _to_union(gid, self.gid_map, OVERFLOW_GID)
        if self.squash_uid is not None:
            uid = self.squash_uid
        if self.squash_gid is not None:
            gid = self.squash_gid
        return uid, gid

    def on_disk(self, uid: int, gid: int) -> tuple[int, int]:
        """On-disk owner for an owner set through the union; -1 stays -1 (unchanged) and an id
        outside the mapping becomes -1 too (the caller refuses it)."""
        if self.uid_map and uid != -1:
            uid = _to_disk(uid, self.uid_map)
        if self.gid_map and gid != -1:
            gid = _to_disk(gid, self.gid_map)
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
