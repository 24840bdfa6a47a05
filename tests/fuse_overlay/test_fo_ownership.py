"""Ownership through fuse_overlay, checked against fuse-overlayfs; ``RENAME_EXCHANGE`` against
the kernel's overlayfs (issue #3, part A).

The mount-level tests run this file as a script inside a user namespace (``--in-namespace``):
for ownership one that maps many ids (root to the caller, 1..65536 to its subordinate range), so
lower files can belong to anyone and chown works.  fuse-overlayfs and fuse_overlay mount the
same lower directory with the same options; the tests compare what the two show and what they
write into the upper directory, and also check the expected values themselves, so that the test
fails when both are wrong the same way.  The pure tests at the end need no FUSE.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from fuse_overlay.ownership import OVERFLOW_GID, OVERFLOW_UID

HERE = Path(__file__).resolve().parent
OVERRIDE = "user.containers.override_stat"
FO_OVERRIDE = "user.fuseoverlayfs.override_stat"

# on disk 0-9 shown as 100-109, 200-209 as 0-9, 1000 as 1000; nothing else is mapped (and no
# range maps back onto itself, so reading the triples the wrong way round shows)
MAPPING = "uidmapping=0:100:10:200:0:10:1000:1000:1,gidmapping=0:100:10:200:0:10:1000:1000:1"
# lower files named by their on-disk owner
LOWER_OWNERS = {"f_0_0": (0, 0), "f_5_6": (5, 6), "f_203_204": (203, 204), "f_50_51": (50, 51),
                "f_1000_1000": (1000, 1000)}


# -- inside the user namespace ---------------------------------------------------------------


def _res(fn: Any) -> Any:
    try:
        out = fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok" if out is None else out


def _as(uid: int, gid: int, *cmd: str) -> Any:
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd],
                          capture_output=True, text=True)
    return "ok" if proc.returncode == 0 else proc.stderr.strip().split(": ")[-1]


def _owner(path: Path) -> list[int]:
    st = os.lstat(path)
    return [st.st_uid, st.st_gid]


def _tree_owners(root: Path) -> dict[str, list[int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = _owner(path)
    return dict(sorted(out.items()))


def _override(path: Path) -> list[int] | None:
    """The override_stat xattr of *path* as [uid, gid, permission bits], whichever name holds it."""
    for name in (OVERRIDE, FO_OVERRIDE):
        try:
            fields = os.getxattr(path, name, follow_symlinks=False).decode().split(":")
        except OSError:
            continue
        return [int(fields[0]), int(fields[1]), int(fields[2], 8) & 0o7777]
    return None


def _layers(base: Path) -> tuple[Path, Path, Path, Path]:
    lower, upper, work, mnt = base / "l0", base / "u", base / "w", base / "m"
    for path in (lower, upper, work, mnt):
        path.mkdir(parents=True)
        path.chmod(0o755)
    return lower, upper, work, mnt


def _owned_lower(lower: Path) -> None:
    (lower / "d").mkdir()
    (lower / "d").chmod(0o777)
    for name, (uid, gid) in LOWER_OWNERS.items():
        (lower / name).write_text(name)
        (lower / name).chmod(0o640)
        os.chown(lower / name, uid, gid)
    os.symlink("f_5_6", lower / "sym")
    os.lchown(lower / "sym", 5, 6)


def ownership_run(base: Path, kind: str, extra: str) -> dict[str, Any]:
    """Show, chown, create as several uids and copy up, through *kind* mounted with *extra*."""
    import fo_harness

    lower, upper, work, mnt = _layers(base)
    _owned_lower(lower)
    out: dict[str, Any] = {}
    with fo_harness.mounted(kind, [lower], upper, work, mnt, f"{extra},allow_other"):
        out["shown"] = {n: _owner(mnt / n) for n in [*LOWER_OWNERS, "sym", "d"]}
        out["chown"] = {
            "f_0_0": _res(lambda: os.chown(mnt / "f_0_0", 3, 104)),
            "f_5_6": _res(lambda: os.chown(mnt / "f_5_6", -1, 2)),
            "sym": _res(lambda: os.lchown(mnt / "sym", 1000, 1000)),
            "f_50_51": _res(lambda: os.chown(mnt / "f_50_51", 0, 0)),
        }
        with open(mnt / "f_203_204", "a") as fh:  # copy-up by a write keeps the owner
            fh.write("+")
        out["create"] = {
            "by_root": _res(lambda: (mnt / "d/by_root").write_text("r")),
            "dir_root": _res(lambda: (mnt / "d/dir_root").mkdir()),
            "by_1000": _as(1000, 1000, "touch", str(mnt / "d/by_1000")),
            "dir_1000": _as(1000, 1000, "mkdir", str(mnt / "d/dir_1000")),
            "sym_1000": _as(1000, 1000, "ln", "-s", "by_1000", str(mnt / "d/sym_1000")),
            "by_3": _as(3, 4, "touch", str(mnt / "d/by_3")),
        }
        out["after"] = _tree_owners(mnt)
    out["upper"] = _tree_owners(upper)
    return out


def override_run(base: Path, kind: str, extra: str) -> dict[str, Any]:
    """override_stat xattrs (on every lower object and the layer root, which fuse-overlayfs
    needs to look at them) under a mapping: shown, then chown and chmod through the mount."""
    import fo_harness

    lower, upper, work, mnt = _layers(base)
    for name, value in (("f", b"5:6:0640"), ("g", b"203:204:0600"), ("h", b"0:0:0755")):
        (lower / name).write_text(name)
        os.setxattr(lower / name, FO_OVERRIDE, value)
    os.setxattr(lower, FO_OVERRIDE, b"0:0:0755")
    out: dict[str, Any] = {}

    def show() -> dict[str, list[int]]:
        return {n: [*_owner(mnt / n), stat.S_IMODE(os.lstat(mnt / n).st_mode)] for n in "fgh"}

    with fo_harness.mounted(kind, [lower], upper, work, mnt, f"{extra},allow_other"):
        out["shown"] = show()
        out["chown"] = [_res(lambda: os.chown(mnt / "f", 3, -1)),
                        _res(lambda: os.chown(mnt / "g", 1000, 1000))]
        out["chmod"] = _res(lambda: os.chmod(mnt / "h", 0o700))
        out["after"] = show()
    out["upper"] = {n: _override(upper / n) for n in "fgh" if (upper / n).exists()}
    return out


def foreign_prepare(base: Path, kinds: list[str]) -> None:
    """In the many-id namespace: per kind, a lower file owned by ids the one-id namespace of
    :func:`foreign_run` does not map (it sees them as the overflow id)."""
    for kind in kinds:
        lower, upper, work, mnt = _layers(base / kind)
        (lower / "f").write_text("data\n")
        (lower / "f").chmod(0o604)
        os.chown(lower / "f", 5, 7)


def foreign_run(base: Path, kind: str) -> dict[str, Any]:
    """In a one-id namespace, squash_to_root: write to the foreign-owned lower file (copy-up
    cannot give the copy its owner), then mount again without squashing."""
    import fo_harness

    lower, upper, work, mnt = (base / kind / n for n in ("l0", "u", "w", "m"))

    def show() -> list[int]:
        st = os.lstat(mnt / "f")
        return [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)]

    out: dict[str, Any] = {}
    with fo_harness.mounted(kind, [lower], upper, work, mnt, "squash_to_root"):
        out["squashed"] = show()
        out["write"] = _res(lambda: (mnt / "f").write_text("new\n"))
        out["squashed_after"] = show()
    out["upper_owner"] = _owner(upper / "f")
    out["upper_override"] = _override(upper / "f")
    with fo_harness.mounted(kind, [lower], upper, work, mnt):
        out["after"] = show()
    shutil.rmtree(work, ignore_errors=True)  # fuse-overlayfs leaves a 000 work/work behind
    with fo_harness.mounted(kind, [lower], None, None, mnt):
        out["lower"] = show()
    return out


EXCHANGE_LOWER = {"a": "lower a\n", "b": "lower b\n", "dir/": None, "dir/x": "x\n",
                  "low2/": None, "low2/y": "y\n"}


def _exchange_setup(m: Path, case: str) -> tuple[str, str]:
    """Prepare *case* through the mount; the two names to exchange."""
    if case in ("upper_lower", "lowerdir_file"):
        (m / "new").write_text("upper new\n")
    if case in ("file_upperdir", "upperdir_upperdir"):
        (m / "udir").mkdir()
        (m / "udir/inside").write_text("i\n")
    if case == "upperdir_upperdir":
        (m / "udir2").mkdir()
        (m / "udir2/other").write_text("o\n")
    if case == "into_lower_name":
        # "dir" again as a new (opaque) directory, and a fresh one that is not opaque: after
        # the exchange the fresh one sits where the lower layer has "dir"
        shutil.rmtree(m / "dir")
        (m / "dir").mkdir()
        (m / "dir/again").write_text("again\n")
        (m / "fresh").mkdir()
        (m / "fresh/f").write_text("f\n")
    return {
        "lower_lower": ("a", "b"), "upper_lower": ("new", "a"), "file_upperdir": ("b", "udir"),
        "upperdir_upperdir": ("udir", "udir2"), "missing": ("a", "nope"), "same": ("a", "a"),
        "lowerdir_file": ("dir", "new"), "lowerdir_lowerdir": ("dir", "low2"),
        "into_lower_name": ("fresh", "dir"),
    }[case]


def exchange_run(base: Path, kind: str, cases: list[str]) -> dict[str, Any]:
    """``renameat2(RENAME_EXCHANGE)`` between lower and upper files and directories, each case
    on fresh layers: the result, the merged view after it, and the upper directory's names."""
    import fo_harness
    import fo_scenarios

    from fuse_overlay._syscalls import RENAME_EXCHANGE, renameat2

    out: dict[str, Any] = {}
    for case in cases:
        lower, upper, work, mnt = _layers(base / case)
        fo_scenarios.build(lower, EXCHANGE_LOWER)
        with fo_harness.mounted(kind, [lower], upper, work, mnt):
            one, two = _exchange_setup(mnt, case)
            result = _res(lambda a=mnt / one, b=mnt / two: renameat2(str(a), str(b),
                                                                     RENAME_EXCHANGE))
            view = fo_scenarios.snapshot(mnt)
        names = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
        out[case] = {"result": result, "view": view, "upper": None if kind == "plain" else names}
    return out


def inside(request: dict[str, Any]) -> Any:
    mode = request["mode"]
    if mode == "foreign_prepare":
        return foreign_prepare(Path(request["base"]), request["kinds"])
    if mode == "foreign":
        return {kind: foreign_run(Path(request["base"]), kind) for kind in request["kinds"]}
    base = Path(tempfile.mkdtemp(prefix="fo-own-", dir="/tmp"))
    base.chmod(0o755)  # other uids must reach the mount point
    try:
        answer: dict[str, Any] = {}
        for kind in request["kinds"]:
            where = base / kind
            if mode == "ownership":
                answer[kind] = ownership_run(where, kind, request["extra"])
            elif mode == "override":
                answer[kind] = override_run(where, kind, request["extra"])
            elif mode == "exchange":
                answer[kind] = exchange_run(where, kind, request["cases"])
        return answer
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755)
        shutil.rmtree(base, ignore_errors=True)




# -- the tests -------------------------------------------------------------------------------

# root mapped to the caller, 1..65536 to its /etc/subuid and /etc/subgid ranges
MANY_IDS = ["--map-root-user", "--map-users=auto", "--map-groups=auto", "-m"]
ONE_ID = ["-Urm"]


@functools.cache
def many_ids_reason() -> str | None:
    proc = subprocess.run(["unshare", *MANY_IDS, "cat", "/proc/self/uid_map"],
                          capture_output=True, text=True)
    if proc.returncode or len(proc.stdout.splitlines()) < 2:
        return f"no user namespace with subordinate ids here: {proc.stderr.strip()}"
    return None


def run_inside(request: dict[str, Any], unshare: list[str]) -> Any:
    proc = subprocess.run(
        ["unshare", *unshare, sys.executable, str(Path(__file__).resolve()), "--in-namespace"],
        input=json.dumps(request), capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    if proc.returncode:
        raise AssertionError(f"in-namespace run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def kinds() -> list[str]:
    from fo_support import fuse_overlayfs_reason

    return ["fuse"] + (["fuse-overlayfs"] if fuse_overlayfs_reason() is None else [])


def without_markers(owners: dict[str, list[int]]) -> dict[str, list[int]]:
    """Upper owners without fuse-overlayfs's opaque markers (it writes them in new dirs)."""
    return {k: v for k, v in owners.items() if not os.path.basename(k).startswith(".wh.")}


def same_as_fuse_overlayfs(answer: dict[str, Any], *keys: str) -> None:
    if "fuse-overlayfs" not in answer:
        return
    ours, theirs = answer["fuse"], answer["fuse-overlayfs"]
    for key in keys:
        if key == "upper":
            assert without_markers(ours[key]) == without_markers(theirs[key]), key
        else:
            assert ours[key] == theirs[key], key


def _disk_to_union(i: int) -> int:
    """MAPPING, written out independently of fuse_overlay.ownership."""
    if 0 <= i < 10:
        return 100 + i
    if 200 <= i < 210:
        return i - 200
    return 1000 if i == 1000 else -1


@pytest.fixture(scope="module")
def mapped() -> dict[str, Any]:
    reason = many_ids_reason()
    if reason:
        pytest.skip(reason)
    return run_inside({"mode": "ownership", "kinds": kinds(), "extra": MAPPING}, MANY_IDS)  # type: ignore[no-any-return]


@pytest.mark.requires_userns
@pytest.mark.requires_fuse
def test_uidmapping_shows_disk_ids_as_fuse_overlayfs_does(mapped: dict[str, Any]) -> None:
    """``uidmapping=0:100:10:...``: an on-disk owner 0..9 is shown as 100..109, and so on."""
    expected = {}
    for name, (uid, gid) in LOWER_OWNERS.items():
        shown = [_disk_to_union(uid), _disk_to_union(gid)]
        expected[name] = [OVERFLOW_UID if shown[0] < 0 else shown[0],
                          OVERFLOW_GID if shown[1] < 0 else shown[1]]
    expected.update(sym=[105, 106], d=[100, 100])
    assert mapped["fuse"]["shown"] == expected
    same_as_fuse_overlayfs(mapped, "shown")


@pytest.mark.requires_userns
@pytest.mark.requires_fuse
def test_chown_and_new_files_store_mapped_back_ids(mapped: dict[str, Any]) -> None:
    ours = mapped["fuse"]
    assert set(ours["chown"].values()) == {"ok"}
    assert {k: v for k, v in ours["create"].items() if k != "by_root"} == dict.fromkeys(
        ["dir_root", "by_1000", "dir_1000", "sym_1000", "by_3"], "ok")
    after, upper = ours["after"], without_markers(ours["upper"])
    # what was set through the union is shown back, and stored as the mapping's disk ids
    assert after["f_0_0"] == [3, 104] and upper["f_0_0"] == [203, 4]
    assert after["f_5_6"] == [105, 2] and upper["f_5_6"] == [5, 202]  # -1 kept the uid
    assert after["sym"] == [1000, 1000] and upper["sym"] == [1000, 1000]
    assert after["f_50_51"] == [0, 0] and upper["f_50_51"] == [200, 200]
    # a copy-up keeps the on-disk owner
    assert after["f_203_204"] == [3, 4] and upper["f_203_204"] == [203, 204]
    # new objects belong to their creator, mapped back
    for name, disk in (("d/by_root", [200, 200]), ("d/dir_root", [200, 200]),
                       ("d/by_1000", [1000, 1000]), ("d/dir_1000", [1000, 1000]),
                       ("d/sym_1000", [1000, 1000]), ("d/by_3", [203, 204])):
        assert upper[name] == disk, name
        assert after[name] == [_disk_to_union(disk[0]), _disk_to_union(disk[1])], name
    same_as_fuse_overlayfs(mapped, "chown", "create", "after", "upper")


@pytest.mark.requires_userns
@pytest.mark.requires_fuse
@pytest.mark.parametrize("extra, shows", [
    ("squash_to_root", [0, 0]),
    ("squash_to_uid=7,squash_to_gid=8", [7, 8]),
    (MAPPING + ",squash_to_uid=7", None),
])
def test_squash_shows_one_owner_and_writes_real_ones(extra: str, shows: list[int] | None) -> None:
    """Lower files belong to several ids; squashing changes only what is shown (the squash_to_*
    scenarios of fo_scenarios.py run where every file already belongs to root)."""
    reason = many_ids_reason()
    if reason:
        pytest.skip(reason)
    answer = run_inside({"mode": "ownership", "kinds": kinds(), "extra": extra}, MANY_IDS)
    ours = answer["fuse"]
    if shows is None:  # squash_to_uid wins over the mapping for uids, gids stay mapped
        assert ours["shown"]["f_5_6"] == [7, 106] and ours["shown"]["f_203_204"] == [7, 4]
    else:
        assert set(map(tuple, ours["shown"].values())) == {tuple(shows)}
        assert set(map(tuple, ours["after"].values())) == {tuple(shows)}
        upper = without_markers(ours["upper"])
        assert upper["f_203_204"] == [203, 204]  # copied up with its real owner
        assert upper["f_0_0"] == [3, 104] and upper["d/by_1000"] == [1000, 1000]
    same_as_fuse_overlayfs(answer, "shown", "chown", "create", "after", "upper")


@pytest.mark.requires_userns
@pytest.mark.requires_fuse
def test_override_stat_ids_are_disk_ids_under_a_mapping() -> None:
    """``user.fuseoverlayfs.override_stat`` (uid:gid:mode) under a mapping: its ids are shown
    mapped, and chown stores mapped-back ids in it, as fuse-overlayfs with xattr_permissions=2
    (which needs the xattr on the layer root to look at any)."""
    reason = many_ids_reason()
    if reason:
        pytest.skip(reason)
    answer = run_inside({"mode": "override", "kinds": kinds(),
                         "extra": MAPPING + ",xattr_permissions=2"}, MANY_IDS)
    ours = answer["fuse"]
    assert ours["shown"] == {"f": [105, 106, 0o640], "g": [3, 4, 0o600], "h": [100, 100, 0o755]}
    assert ours["chown"] == ["ok", "ok"] and ours["chmod"] == "ok"
    assert ours["after"] == {"f": [3, 106, 0o640], "g": [1000, 1000, 0o600],
                             "h": [100, 100, 0o700]}
    assert ours["upper"] == {"f": [203, 6, 0o640], "g": [1000, 1000, 0o600], "h": [0, 0, 0o700]}
    # fuse-overlayfs stores -1 for the gid chown(f, 3, -1) leaves alone (shown as 65534): the
    # rest must agree
    if "fuse-overlayfs" in answer:
        theirs = answer["fuse-overlayfs"]
        assert theirs["shown"] == ours["shown"]
        for key in ("after", "upper"):
            assert {n: v for n, v in theirs[key].items() if n != "f"} == {
                n: v for n, v in ours[key].items() if n != "f"}
            assert theirs[key]["f"][0] == ours[key]["f"][0]


@pytest.mark.requires_userns
@pytest.mark.requires_fuse
def test_copy_up_keeps_an_owner_it_cannot_chown_to(tmp_path: Path) -> None:
    """A lower file whose owner this namespace does not map (seen as the overflow id): with
    squash_to_root it can be written, and the copy-up, unable to chown, keeps the owner in
    ``user.containers.override_stat``; mounted again without squashing, the file shows what the
    lower file shows (fuse-overlayfs loses it: the copy shows as root's)."""
    reason = many_ids_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path / "foreign"
    base.mkdir()
    run_inside({"mode": "foreign_prepare", "base": str(base), "kinds": kinds()}, MANY_IDS)
    answer = run_inside({"mode": "foreign", "base": str(base), "kinds": kinds()}, ONE_ID)
    ours = answer["fuse"]
    assert ours["lower"] == [OVERFLOW_UID, OVERFLOW_GID, 0o604]
    assert ours["squashed"] == ours["squashed_after"] == [0, 0, 0o604]
    assert ours["write"] == 4
    assert ours["upper_override"] == [OVERFLOW_UID, OVERFLOW_GID, 0o604]
    assert ours["after"] == ours["lower"]
    if "fuse-overlayfs" in answer:
        assert answer["fuse-overlayfs"]["squashed_after"] == ours["squashed_after"]


EXCHANGE_CASES = ["lower_lower", "upper_lower", "file_upperdir", "upperdir_upperdir", "missing",
                  "same", "into_lower_name", "lowerdir_file", "lowerdir_lowerdir"]
KERNEL_EXDEV = {"lowerdir_file", "lowerdir_lowerdir"}  # lower directories, no redirect_dir


@pytest.fixture(scope="module")
def exchanged() -> dict[str, Any]:
    from fo_support import kernel_overlay_reason

    kinds_ = ["fuse", "plain"] + (["kernel"] if kernel_overlay_reason() is None else [])
    return run_inside({"mode": "exchange", "kinds": kinds_, "cases": EXCHANGE_CASES}, ONE_ID)  # type: ignore[no-any-return]


@pytest.mark.requires_userns
@pytest.mark.requires_fuse
@pytest.mark.parametrize("case", EXCHANGE_CASES)
def test_rename_exchange(exchanged: dict[str, Any], case: str) -> None:
    """``renameat2(RENAME_EXCHANGE)``: as the kernel's overlayfs where it supports it (same
    result, merged view and upper directory: copied-up sides, no stray whiteouts, an opaque
    directory where a lower one has the name); where it answers EXDEV (a lower directory),
    fuse_overlay exchanges anyway and ends as a plain directory does."""
    ours, plain = exchanged["fuse"][case], exchanged["plain"][case]
    kernel = exchanged.get("kernel", {}).get(case)
    if case in KERNEL_EXDEV:
        if kernel is not None:
            assert kernel["result"] == "EXDEV"
        assert ours["result"] == "ok"
    elif kernel is not None:
        assert ours["result"] == kernel["result"]
        assert ours["view"] == kernel["view"]
        assert ours["upper"] == kernel["upper"]
    assert ours["result"] == plain["result"]
    assert ours["view"] == plain["view"]


# -- without FUSE ----------------------------------------------------------------------------


def _ops(tmp_path: Path, **ownership: Any) -> Any:
    from fuse_overlay.layers import LayerStack
    from fuse_overlay.operations import OverlayOperations
    from fuse_overlay.ownership import Ownership

    for name in ("low", "up", "work"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "low/f").write_text("f")
    (tmp_path / "low/f").chmod(0o640)
    return OverlayOperations(LayerStack([str(tmp_path / "low")], str(tmp_path / "up")),
                             str(tmp_path / "work"), ownership=Ownership(**ownership))


def _ids(disk: int, union: int) -> Any:
    from fuse_overlay.ownership import IdMapping

    return (IdMapping(disk, union, 1),)


def test_chown_of_an_override_stores_disk_ids(tmp_path: Path) -> None:
    me, my_gid = os.getuid(), os.getgid()
    ops = _ops(tmp_path, uid_map=_ids(me, 10) + _ids(5000, 50), gid_map=_ids(my_gid, 20))
    os.setxattr(tmp_path / "low/f", OVERRIDE, f"{me}:{my_gid}:0604".encode())
    assert [ops.getattr("/f")[k] for k in ("st_uid", "st_gid")] == [10, 20]
    ops.chown("/f", 50, -1)
    assert _override(tmp_path / "up/f") == [5000, my_gid, 0o604]
    assert [ops.getattr("/f")[k] for k in ("st_uid", "st_gid")] == [50, 20]
    ops.chmod("/f", 0o600)
    assert _override(tmp_path / "up/f") == [5000, my_gid, 0o600]


def test_chown_to_an_unmapped_id_is_refused_before_any_copy_up(tmp_path: Path) -> None:
    ops = _ops(tmp_path, uid_map=_ids(os.getuid(), 0))
    try:
        ops.chown("/f", 4242, -1)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
    else:
        raise AssertionError("chown to an id outside uidmapping succeeded")
    assert os.listdir(tmp_path / "up") == []


def test_copy_up_keeps_the_owner_in_override_stat_when_chown_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copy-up cannot chown the copy (the owner is not ours): the owner and mode the union
    showed stay, kept as containers/storage keeps them."""
    ops = _ops(tmp_path)
    before = ops.getattr("/f")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "chown refused")

    monkeypatch.setattr(os, "chown", refuse)
    fd = ops.open("/f", os.O_WRONLY)  # copy-up
    ops.release("/f", fd)
    assert _override(tmp_path / "up/f") == [before["st_uid"], before["st_gid"], 0o640]
    after = ops.getattr("/f")
    assert [after[k] for k in ("st_uid", "st_gid", "st_mode")] == [
        before[k] for k in ("st_uid", "st_gid", "st_mode")]


def test_new_objects_get_the_callers_ids_mapped_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fuse_overlay.operations as operations

    ops = _ops(tmp_path, uid_map=_ids(5000, 10), gid_map=_ids(5001, 20))
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(operations, "fuse_get_context", lambda: (10, 20, 1))
    monkeypatch.setattr(os, "chown", lambda path, uid, gid, **kw: calls.append(
        (os.path.basename(path), uid, gid)))
    os.close(ops.create("/new", 0o644))
    ops.mkdir("/dir", 0o755)
    ops.symlink("/sym", "new")
    assert calls == [("new", 5000, 5001), ("dir", 5000, 5001), ("sym", 5000, 5001)]


def test_squashed_chown_succeeds_where_the_disk_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As fuse-overlayfs: squashed owners are all the union shows, so a refused chown (tar and
    package managers chown everything) is not an error; unsquashed it is."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "chown refused")

    squashed = _ops(tmp_path / "s", squash_uid=0, squash_gid=0)
    plain = _ops(tmp_path / "p")
    for which in ("s", "p"):  # upper files: no copy-up (which would keep a refused owner)
        (tmp_path / which / "up/g").write_text("g")
    monkeypatch.setattr(os, "chown", refuse)
    assert squashed.chown("/g", 4242, 4242) == 0
    try:
        plain.chown("/g", 4242, 4242)
    except OSError as exc:
        assert exc.errno == errno.EPERM
    else:
        raise AssertionError("an unsquashed chown the disk refused succeeded")


if __name__ == "__main__" and sys.argv[1:] == ["--in-namespace"]:
    sys.path.insert(0, str(HERE))
    json.dump(inside(json.load(sys.stdin)), sys.stdout)
    sys.exit(0)
