"""Layer unpacking into the overlay format, write_layer, diff_upper, flatten and import."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hostile import member, tar_bytes

from sandbox import layers
from sandbox.errors import SandboxError

OVERRIDE = "user.containers.override_stat"
OPAQUE = "user.overlay.opaque"


def snapshot(root: Path, *, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """A comparable picture of a tree: type, mode, size, content digest, link, mtime, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    extra = (extra, inodes.setdefault(st.st_ino, rel))
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode):
                extra = st.st_rdev
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}
            mtime = None if stat.S_ISDIR(st.st_mode) and not dir_mtimes else st.st_mtime_ns
            out[rel] = (kind, stat.S_IMODE(st.st_mode), extra, mtime, tuple(xattrs.items()))
    return out


def unpack(blob: bytes, dest: Path, **kw: object) -> layers.UnpackStats:
    dest.mkdir(parents=True, exist_ok=True)
    return layers.unpack_layer(io.BytesIO(blob), dest, **kw)  # type: ignore[arg-type]


class OneWayStream(io.RawIOBase):
    """A pipe-like stream: read only, no seek, no peek."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._src.read(min(n, 4096) if n > 0 else 4096)


def sample_layer() -> bytes:
    return tar_bytes([
        member("etc", tarfile.DIRTYPE, mode=0o755),
        member("etc/passwd", data=b"root:x:0:0\n", mode=0o644),
        member("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC"),
        member("bin", tarfile.DIRTYPE, mode=0o755),
        member("bin/su", data=b"\x7fELF", mode=0o4755),
        member("bin/wall", data=b"\x7fELF2", mode=0o2755),
        member("bin/login", tarfile.LNKTYPE, linkname="bin/su"),
        member("tmp", tarfile.DIRTYPE, mode=0o1777),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o640),
        member("usr/lib/x", data=b"implicit parents", mode=0o600),
        member("data/xattr", data=b"x", pax={"SCHILY.xattr.user.mime_type": "text/plain"}),
        member("data/ns", data=b"y", pax={"mtime": "1700000000.123456789"}),
    ])


# -- unpack ------------------------------------------------------------------------------------

def test_unpack_keeps_types_modes_links_and_times(tmp_path: Path) -> None:
    stats = unpack(sample_layer(), tmp_path, owners="ignore")
    assert (stats.files, stats.symlinks, stats.hardlinks, stats.fifos) == (6, 1, 1, 1)
    assert stats.bytes == len(b"root:x:0:0\n\x7fELF\x7fELF2implicit parentsxy")
    assert os.readlink(tmp_path / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert stat.S_IMODE(os.stat(tmp_path / "bin/su").st_mode) == 0o4755
    assert os.stat(tmp_path / "bin/login").st_ino == os.stat(tmp_path / "bin/su").st_ino
    assert stat.S_IMODE(os.stat(tmp_path / "tmp").st_mode) == 0o1777
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run/fifo").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "usr").st_mode) == 0o755  # implicit parent
    assert os.getxattr(tmp_path / "data/xattr", "user.mime_type") == b"text/plain"
    assert os.stat(tmp_path / "data/ns").st_mtime_ns == 1_700_000_000_123_456_789
    assert os.stat(tmp_path / "etc/passwd").st_mtime_ns == 1_700_000_000 * 10**9
    assert os.lstat(tmp_path / "etc/localtime").st_mtime_ns == 1_700_000_000 * 10**9


def test_directory_mtime_is_set_after_its_contents(tmp_path: Path) -> None:
    d, _ = member("d", tarfile.DIRTYPE, mode=0o755)
    d.mtime = 1_000_000_000
    unpack(tar_bytes([(d, b""), member("d/f", data=b"x"), member("d/g/h", data=b"y")]), tmp_path)
    assert os.stat(tmp_path / "d").st_mtime_ns == 1_000_000_000 * 10**9


def test_files_and_dirs_get_owner_rw_with_original_mode_recorded(tmp_path: Path) -> None:
    blob = tar_bytes([member("ro", tarfile.DIRTYPE, mode=0o555),
                      member("ro/f", data=b"x", mode=0o444)])
    unpack(blob, tmp_path, owners="xattr")
    assert stat.S_IMODE(os.stat(tmp_path / "ro").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "ro/f").st_mode) == 0o644
    assert os.getxattr(tmp_path / "ro", OVERRIDE) == b"0:0:0555:dir"
    assert os.getxattr(tmp_path / "ro/f", OVERRIDE) == b"0:0:0444:file"
    assert os.getxattr(tmp_path, OVERRIDE) == b"0:0:0755:dir"  # fuse-overlayfs looks here first


def test_owner_xattr_policy_records_unmapped_owners(tmp_path: Path) -> None:
    f, data = member("home/app/f", data=b"x", mode=0o640)
    f.uid, f.gid = 1000, 1001
    plain, _ = member("etc/hosts", data=b"")
    root, _ = member("./", tarfile.DIRTYPE, mode=0o755)
    stats = unpack(tar_bytes([(root, b""), (f, data), (plain, b"")]), tmp_path, owners="xattr")
    assert os.getxattr(tmp_path / "home/app/f", OVERRIDE) == b"1000:1001:0640:file"
    with pytest.raises(OSError):
        os.getxattr(tmp_path / "etc/hosts", OVERRIDE)
    assert stats.owner_overrides == 1
    assert os.getxattr(tmp_path, OVERRIDE) == b"0:0:0755:dir"


def test_chown_falls_back_to_xattr_when_the_uid_is_not_mapped(tmp_path: Path) -> None:
    f, data = member("f", data=b"x", mode=0o644)
    f.uid = f.gid = 4242
    unpack(tar_bytes([(f, data)]), tmp_path, owners="chown")
    st = os.stat(tmp_path / "f")
    if st.st_uid == 4242:  # running as real root: chown simply worked
        return
    assert os.getxattr(tmp_path / "f", OVERRIDE) == b"4242:4242:0644:file"


def test_whiteouts_become_char_devices_and_opaque_an_xattr(tmp_path: Path) -> None:
    blob = tar_bytes([member("etc/.wh.motd"), member("var/cache/.wh..wh..opq"),
                      member("var/cache/new", data=b"n")])
    stats = unpack(blob, tmp_path)
    st = os.lstat(tmp_path / "etc/motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not (tmp_path / "etc/.wh.motd").exists()
    assert os.getxattr(tmp_path / "var/cache", OPAQUE) == b"y"
    assert not (tmp_path / "var/cache/.wh..wh..opq").exists()
    assert (stats.whiteouts, stats.opaque_dirs) == (1, 1)


def test_whiteout_removes_an_earlier_entry_of_the_same_layer(tmp_path: Path) -> None:
    blob = tar_bytes([member("d/sub/f", data=b"x"), member("f", data=b"y"),
                      member(".wh.d"), member(".wh.f")])
    unpack(blob, tmp_path)
    for name in ("d", "f"):
        st = os.lstat(tmp_path / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_entry_after_its_whiteout_replaces_it_and_stays_opaque(tmp_path: Path) -> None:
    blob = tar_bytes([member(".wh.d"), member("d", tarfile.DIRTYPE, mode=0o755),
                      member("d/new", data=b"x"), member(".wh.f"), member("f", data=b"z")])
    unpack(blob, tmp_path)
    assert os.getxattr(tmp_path / "d", OPAQUE) == b"y"
    assert (tmp_path / "f").read_bytes() == b"z"


def test_type_change_clobbers_the_earlier_entry(tmp_path: Path) -> None:
    blob = tar_bytes([member("x/deep/f", data=b"1"), member("x", data=b"file now"),
                      member("y", data=b"1"), member("y", tarfile.SYMTYPE, linkname="x"),
                      member("z", tarfile.DIRTYPE, mode=0o700), member("z", tarfile.DIRTYPE)])
    unpack(blob, tmp_path)
    assert (tmp_path / "x").read_bytes() == b"file now"
    assert os.readlink(tmp_path / "y") == "x"
    assert stat.S_IMODE(os.stat(tmp_path / "z").st_mode) == 0o744  # re-declared: last wins


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_and_non_ascii_names(tmp_path: Path, fmt: int) -> None:
    long = "/".join(["d" * 60] * 5) + "/" + "f" * 200
    blob = tar_bytes([member(long, data=b"x"),
                      member("l", tarfile.SYMTYPE, linkname="t" * 300),
                      member("h", tarfile.LNKTYPE, linkname=long),
                      member("caf\u00e9", data=b"e")], fmt)
    unpack(blob, tmp_path)
    assert (tmp_path / long).read_bytes() == b"x"
    assert os.readlink(tmp_path / "l") == "t" * 300
    assert os.stat(tmp_path / "h").st_ino == os.stat(tmp_path / long).st_ino
    assert (tmp_path / "caf\u00e9").read_bytes() == b"e"


def test_pax_global_header_applies_to_later_members(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"mtime": "1600000000.5"}) as tar:
        info, data = member("f", data=b"x")
        tar.addfile(info, io.BytesIO(data))
    unpack(buf.getvalue(), tmp_path)
    assert os.stat(tmp_path / "f").st_mtime_ns == 1_600_000_000_500_000_000


def test_tar_written_by_gnu_tar_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    unpack(sample_layer(), src, owners="ignore")
    for fmt in ("gnu", "posix", "ustar"):
        xattrs = ["--xattrs"] if fmt == "posix" else []
        blob = subprocess.run(["tar", f"--format={fmt}", *xattrs, "-C", str(src), "-cf", "-",
                               "."], check=True, capture_output=True).stdout
        dest = tmp_path / fmt
        unpack(blob, dest, owners="ignore")
        expected = snapshot(src)
        got = snapshot(dest)
        if fmt != "posix":  # whole-second times and no xattrs outside PAX
            expected = {k: (*v[:3], v[3] // 10**9) for k, v in expected.items()}  # type: ignore[operator]
            got = {k: (*v[:3], v[3] // 10**9) for k, v in got.items()}  # type: ignore[operator]
        assert got == expected, fmt


@pytest.mark.parametrize("fmt", ["gnu", "posix:0.0", "posix:0.1", "posix:1.0"])
def test_sparse_files_stay_sparse(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(8 << 20)
        f.write(b"end")
        f.seek(1 << 20)
        f.write(b"middle")
    blob = tmp_path / "s.tar"
    fmt, _, version = fmt.partition(":")
    extra = [f"--sparse-version={version}"] if version else []
    subprocess.run(["tar", f"--format={fmt}", "--sparse", *extra, "-C", str(src), "-cf",
                    str(blob), "sparse"], check=True)
    with tarfile.open(blob) as tar:
        assert tar.getmember("sparse").issparse()
    dest = tmp_path / "dest"
    unpack(blob.read_bytes(), dest)
    assert (dest / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert os.stat(dest / "sparse").st_blocks * 512 < (1 << 20)


@pytest.mark.parametrize("compress", [
    pytest.param(lambda b: b, id="plain"),
    pytest.param(lambda b: gzip.compress(b), id="gzip"),
    pytest.param(lambda b: gzip.compress(b[:700]) + gzip.compress(b[700:]), id="gzip-multi"),
    pytest.param(lambda b: zstandard.ZstdCompressor().compress(b), id="zstd"),
    pytest.param(lambda b: lzma.compress(b), id="xz"),
    pytest.param(lambda b: bz2.compress(b), id="bzip2"),
])
def test_compressions_stream_from_a_pipe(tmp_path: Path,
                                        compress: Callable[[bytes], bytes]) -> None:
    plain = tmp_path / "plain"
    unpack(sample_layer(), plain)
    other = tmp_path / "other"
    other.mkdir()
    layers.unpack_layer(OneWayStream(compress(sample_layer())), other)  # type: ignore[arg-type]
    assert snapshot(other, dir_mtimes=False) == snapshot(plain, dir_mtimes=False)


def test_open_decompressed_reads_zstd_multiframe() -> None:
    c = zstandard.ZstdCompressor()
    blob = c.compress(b"a" * 1000) + c.compress(b"b" * 1000)
    assert layers.open_decompressed(io.BytesIO(blob)).read() == b"a" * 1000 + b"b" * 1000


def test_empty_layer(tmp_path: Path) -> None:
    assert unpack(tar_bytes([]), tmp_path).members == 0
    assert os.listdir(tmp_path) == []


def _bad_checksum() -> bytes:
    blob = bytearray(tar_bytes([member("a", data=b"x")]))
    blob[0] ^= 1
    return bytes(blob)


@pytest.mark.parametrize("blob", [b"", b"not a tar at all" * 64, _bad_checksum()],
                         ids=["empty", "text", "checksum"])
def test_garbage_is_refused(tmp_path: Path, blob: bytes) -> None:
    with pytest.raises(SandboxError):
        unpack(blob, tmp_path)


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress,
                                      lzma.compress, bz2.compress],
                         ids=["gzip", "zstd", "xz", "bzip2"])
@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_broken_compressed_blobs_are_one_error(tmp_path: Path, compress: Callable[[bytes], bytes],
                                                damage: str) -> None:
    blob = bytearray(compress(sample_layer()))
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        for i in range(len(blob) // 3, len(blob) // 3 + 16):
            blob[i] ^= 0x55
    with pytest.raises(SandboxError):
        unpack(bytes(blob), tmp_path / "dest")


def test_truncated_between_members_is_refused(tmp_path: Path) -> None:
    blob = tar_bytes([member("a", data=b"x" * 600), member("b", data=b"y")])
    with pytest.raises(SandboxError, match="truncated"):
        unpack(blob[:2560], tmp_path)


def test_filesystem_errors_name_the_member(tmp_path: Path) -> None:
    blob = tar_bytes([member("d/" + "n" * 300, data=b"x")])
    with pytest.raises(SandboxError, match="cannot unpack layer member") as info:
        unpack(blob, tmp_path)
    assert info.value.hint and "path" in info.value.hint


def test_dest_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    with pytest.raises(SandboxError, match="not empty"):
        unpack(tar_bytes([]), tmp_path)


# -- write_layer -----------------------------------------------------------------------------

def read_tar(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        return tar.getmembers()


def write(upper: Path, **kw: object) -> tuple[bytes, layers.LayerDigests]:
    out = io.BytesIO()
    digests = layers.write_layer(upper, out, **kw)  # type: ignore[arg-type]
    return out.getvalue(), digests


@pytest.mark.parametrize("compression", ["gzip", "zstd", None])
def test_round_trip_unpack_write_unpack(tmp_path: Path, compression: str | None) -> None:
    first = tmp_path / "first"
    unpack(sample_layer(), first, owners="ignore")
    blob, digests = write(first, compression=compression)
    second = tmp_path / "second"
    unpack(blob, second, owners="ignore")
    assert snapshot(second) == snapshot(first)
    assert digests.media_type == layers.MEDIA_TYPES[compression]
    assert digests.size == len(blob)
    assert digests.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    plain = layers.open_decompressed(io.BytesIO(blob)).read()
    assert digests.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()


def test_round_trip_of_whiteouts_opaque_and_overrides(tmp_path: Path) -> None:
    f, data = member("app/f", data=b"x", mode=0o600)
    f.uid = f.gid = 1000
    blob = tar_bytes([member("etc/.wh.motd"), member("var/.wh..wh..opq"),
                      member("var/new", data=b"n"), (f, data)])
    first = tmp_path / "first"
    unpack(blob, first, owners="xattr")
    out, _ = write(first, compression=None)
    entries = {m.name: m for m in read_tar(out)}
    assert set(entries) == {"etc", "etc/.wh.motd", "var", "var/.wh..wh..opq", "var/new", "app",
                            "app/f"}
    assert (entries["app/f"].uid, entries["app/f"].gid, entries["app/f"].mode) == (1000, 1000,
                                                                                  0o600)
    assert all(m.uname == "" and m.gname == "" for m in entries.values())
    second = tmp_path / "second"
    unpack(out, second, owners="xattr")
    assert snapshot(second) == snapshot(first)


def test_write_layer_reads_fallback_whiteout_files(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / ".wh.gone").touch()
    (upper / "d" / ".wh..wh..opq").touch()
    (upper / "d" / "kept").write_text("k")
    names = [m.name for m in read_tar(write(upper, compression=None)[0])]
    assert names == [".wh.gone", "d", "d/.wh..wh..opq", "d/kept"]


def test_write_layer_is_reproducible(tmp_path: Path) -> None:
    trees = []
    for i, name in enumerate(("a", "b")):
        root = tmp_path / name
        unpack(sample_layer(), root)
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                os.utime(os.path.join(dirpath, n), ns=(0, (2_000_000_000 + i) * 10**9),
                         follow_symlinks=False)
        trees.append(root)
    one = write(trees[0], source_date_epoch=1_800_000_000)
    two = write(trees[1], source_date_epoch=1_800_000_000)
    assert one == two
    assert write(trees[0], source_date_epoch=1_800_000_000) == one
    assert all(m.mtime <= 1_800_000_000 for m in read_tar(one[0]))


def test_write_layer_keeps_hard_links_and_xattrs(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "a").write_text("same")
    os.link(upper / "a", upper / "b")
    os.setxattr(upper / "a", "user.k", b"v")
    os.setxattr(upper / "a", "user.overlay.origin", b"skip me")
    entries = read_tar(write(upper, compression=None)[0])
    assert [(m.name, m.type) for m in entries] == [("a", tarfile.REGTYPE), ("b", tarfile.LNKTYPE)]
    assert [k for k in entries[0].pax_headers if "xattr" in k] == ["SCHILY.xattr.user.k"]


# -- diff, flatten, import -------------------------------------------------------------------

@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two lower layers (overlay format) and an upper with every kind of change."""
    l1, l2, upper = tmp_path / "l1", tmp_path / "l2", tmp_path / "upper"
    unpack(tar_bytes([member("etc/passwd", data=b"p"), member("etc/motd", data=b"m"),
                      member("var/cache/a", data=b"a"), member("var/cache/b", data=b"b"),
                      member("opt/old", data=b"o"), member("gone", data=b"g")]), l1)
    unpack(tar_bytes([member(".wh.gone"), member("opt/.wh..wh..opq"),
                      member("opt/new", data=b"n")]), l2)
    unpack(tar_bytes([member("etc/passwd", data=b"changed"), member("etc/.wh.motd"),
                      member("var/cache/.wh..wh..opq"), member("var/cache/b", data=b"b2"),
                      member("var/cache/c", data=b"c"), member("home/u/f", data=b"f")]), upper)
    return l1, l2, upper


def test_diff_upper(stack: tuple[Path, Path, Path]) -> None:
    l1, l2, upper = stack
    assert layers.diff_upper(upper, [l2, l1]) == [
        ("C", "/etc"), ("D", "/etc/motd"), ("C", "/etc/passwd"),
        ("A", "/home"), ("A", "/home/u"), ("A", "/home/u/f"),
        ("C", "/var"), ("C", "/var/cache"), ("D", "/var/cache/a"), ("C", "/var/cache/b"),
        ("A", "/var/cache/c"),
    ]


def test_diff_sees_through_lower_whiteouts(stack: tuple[Path, Path, Path],
                                           tmp_path: Path) -> None:
    l1, l2, _ = stack
    upper = tmp_path / "u2"
    unpack(tar_bytes([member("gone", data=b"back"), member("opt/old", data=b"back"),
                      member("opt/new", data=b"again")]), upper)
    assert layers.diff_upper(upper, [l2, l1]) == [
        ("A", "/gone"), ("C", "/opt"), ("C", "/opt/new"), ("A", "/opt/old")]


def test_flatten_layers(stack: tuple[Path, Path, Path], tmp_path: Path) -> None:
    l1, l2, upper = stack
    dest = tmp_path / "flat"
    dest.mkdir()
    layers.flatten_layers([upper, l2, l1], dest)
    files = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert files == {"etc/passwd": b"changed", "var/cache/b": b"b2", "var/cache/c": b"c",
                     "opt/new": b"n", "home/u/f": b"f"}
    for path in dest.rglob("*"):
        assert OPAQUE not in os.listxattr(path, follow_symlinks=False)


def test_import_rootfs_from_directory_and_tarballs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    unpack(sample_layer(), src, owners="ignore")
    expected = snapshot(src)
    from_dir = tmp_path / "from_dir"
    from_dir.mkdir()
    stats = layers.import_rootfs(src, from_dir, owners="ignore")
    assert stats.hardlinks == 1 and stats.fifos == 1
    assert snapshot(from_dir) == expected
    for suffix, opener in ((".tar.gz", gzip.compress),
                           (".tar.zst", zstandard.ZstdCompressor().compress)):
        archive = tmp_path / ("rootfs" + suffix)
        archive.write_bytes(opener(sample_layer()))
        dest = tmp_path / suffix
        dest.mkdir()
        layers.import_rootfs(archive, dest, owners="ignore")
        assert snapshot(dest, dir_mtimes=False) == snapshot(src, dir_mtimes=False)


def test_fallback_formats_when_mknod_and_user_xattrs_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_setxattr = os.setxattr

    def no_mknod(*args: object, **kw: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    def no_opaque(target: object, name: str, value: bytes, *args: object, **kw: object) -> None:
        if name == OPAQUE:
            raise OSError(95, "Operation not supported")
        real_setxattr(target, name, value, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mknod", no_mknod)
    monkeypatch.setattr(os, "setxattr", no_opaque)
    lower = tmp_path / "lower"
    unpack(tar_bytes([member("a", data=b"a"), member("d/x", data=b"x"), member("keep", data=b"k")]),
           lower)
    upper = tmp_path / "upper"
    stats = unpack(tar_bytes([member(".wh.a"), member("d/.wh..wh..opq"),
                              member("d/y", data=b"y")]), upper)
    assert (stats.whiteouts, stats.opaque_dirs) == (1, 1)
    assert sorted(os.listdir(upper)) == [".wh.a", "d"]
    assert sorted(os.listdir(upper / "d")) == [".wh..wh..opq", "y"]
    assert layers.diff_upper(upper, [lower]) == [
        ("D", "/a"), ("C", "/d"), ("D", "/d/x"), ("A", "/d/y")]
    flat = tmp_path / "flat"
    flat.mkdir()
    layers.flatten_layers([upper, lower], flat)
    assert sorted(str(p.relative_to(flat)) for p in flat.rglob("*")) == ["d", "d/y", "keep"]
    names = [m.name for m in read_tar(write(upper, compression=None)[0])]
    assert names == [".wh.a", "d", "d/.wh..wh..opq", "d/y"]


def test_stats_add_up_and_summarise(tmp_path: Path) -> None:
    one = unpack(sample_layer(), tmp_path / "one")
    both = one + one
    assert both.files == 2 * one.files and both.bytes == 2 * one.bytes
    assert "6 files" in one.summary() and "devices" not in one.summary()
