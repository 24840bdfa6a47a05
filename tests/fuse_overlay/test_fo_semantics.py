"""Every union scenario observed identically on kernel overlayfs, fuse_overlay and a plain dir.

The scenarios live in fo_scenarios.py; all of them run in one user+mount namespace per session
(fo_harness.py), each on fresh layers and a fresh mount.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fo_scenarios
import pytest
from fo_support import binding_reason, fuse_overlayfs_reason, kernel_overlay_reason, run_harness

pytestmark = [pytest.mark.requires_userns, pytest.mark.requires_fuse]

MMAP_DIRECT_IO = (
    "operations.py opens hard-linked upper files with direct_io (wants_direct_io); libfuse "
    "before 3.16 cannot ask for FUSE_CAP_DIRECT_IO_ALLOW_MMAP, so the kernel refuses a shared "
    "mmap of such a handle with ENODEV where overlayfs maps it"
)
UNLINKED_GETATTR = (
    "fstat of a file reopened and then unlinked while open: the kernel sends GETATTR without a "
    "file handle, and libfuse's high-level API with hard_remove (operations.py init_with_config, "
    "_fuse.libfuse2_options) has no path left for the node, so it answers ESTALE (ENOENT on "
    "libfuse 2) before any handler runs; overlayfs answers from the open file"
)
KNOWN: dict[str, str] = {
    "mmap-hard-linked": MMAP_DIRECT_IO,
    "fstat-unlinked-open-file": UNLINKED_GETATTR,
}
NAMES = sorted(fo_scenarios.SCENARIOS)


def _params(names: list[str], known: dict[str, str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=known[n]))
            if n in known else n for n in names]


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    kinds = ["fuse", "plain"]
    if kernel_overlay_reason() is None:
        kinds.append("kernel")
    if fuse_overlayfs_reason() is None:
        kinds.append("fuse-overlayfs")
    root = tmp_path_factory.mktemp("semantics")
    return run_harness({"root": str(root), "mode": "scenarios", "kinds": kinds})  # type: ignore[no-any-return]


def _no_exception(kind: str, value: Any) -> None:
    if isinstance(value, dict) and "exception" in value:
        pytest.fail(f"{kind} raised:\n{value['exception']}")


def _check(observed: dict[str, dict[str, Any]], ours: dict[str, Any], name: str) -> None:
    sc = fo_scenarios.SCENARIOS[name]
    _no_exception("fuse_overlay", ours[name])
    if sc.oracle == "expect":
        assert ours[name] == sc.expect
        return
    if sc.oracle not in observed:
        pytest.skip(f"oracle {sc.oracle} unavailable")
    theirs = observed[sc.oracle][name]
    _no_exception(sc.oracle, theirs)
    assert ours[name] == theirs


@pytest.mark.parametrize("name", _params(NAMES, KNOWN))
def test_same_as_oracle(observed: dict[str, dict[str, Any]], name: str) -> None:
    _check(observed, observed["fuse"], name)


@pytest.mark.parametrize(
    "name", _params([n for n in NAMES if fo_scenarios.SCENARIOS[n].plain], KNOWN))
def test_same_as_plain_directory(observed: dict[str, dict[str, Any]], name: str) -> None:
    """The plain directory is the oracle of last resort (unionmount-testsuite ``--no``)."""
    ours, plain = observed["fuse"][name], observed["plain"][name]
    _no_exception("plain", plain)
    assert ours == plain


def test_rename_of_lower_directory_does_better_than_exdev(
    observed: dict[str, dict[str, Any]],
) -> None:
    """rename(2) of a lower directory: EXDEV on the kernel (mv then copies), done here."""
    ours = observed["fuse"]["rename-lower-direct"][0]
    assert ours == ["ok", "ok", "ok", "ok"]
    if "kernel" in observed:
        assert observed["kernel"]["rename-lower-direct"][0][:2] == ["ok", "EXDEV"]


# -- the fusepy binding (libfuse 2) ----------------------------------------------------------------

FUSEPY_CORE = [
    "open-plain", "readdir-merge", "open-append", "open-creat-excl", "open-rdwr-copyup",
    "truncate", "unlink", "rmdir", "rename-file", "rename-exdev", "rename-lower-direct",
    "hard-link", "symlink", "chmod", "utimes-ns", "xattrs", "whiteout-recreate-dir",
    "rename-noreplace-touch-omit-punch", "fallocate-punch", "mmap-shared-write",
    "inode-stable-copyup", "no-stray-whiteouts", "readonly-with-upper", "access",
    "unlink-open-file", "fstat-unlinked-open-file",
]
FUSEPY_KNOWN = {
    "fstat-unlinked-open-file": UNLINKED_GETATTR,
    "hard-link": "libfuse 2's high-level API cannot invalidate another name's cached attributes "
                 "(fuse_invalidate is a stub in 2.9), so st_nlink of the other names is stale",
}


@pytest.fixture(scope="module")
def fusepy_observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = binding_reason("fusepy")
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("fusepy")
    return run_harness({"root": str(root), "mode": "scenarios", "kinds": ["fuse"],  # type: ignore[no-any-return]
                        "names": FUSEPY_CORE}, env={"FUSE_OVERLAY_BINDING": "fusepy"})


def test_fusepy_server_runs_on_libfuse2(fusepy_observed: dict[str, Any]) -> None:
    assert fusepy_observed["_libfuse"] and all(
        name.startswith("libfuse.so.2") for name in fusepy_observed["_libfuse"]
    ), fusepy_observed["_libfuse"]


@pytest.mark.parametrize("name", _params(FUSEPY_CORE, FUSEPY_KNOWN))
def test_fusepy_binding_same_as_oracle(
    observed: dict[str, dict[str, Any]], fusepy_observed: dict[str, Any], name: str,
) -> None:
    _check(observed, fusepy_observed["fuse"], name)


# -- trusted.overlay.opaque ------------------------------------------------------------------------


def test_trusted_opaque_lower_dir_hides_lower_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trusted.overlay.opaque=y`` (what rootful overlayfs writes) makes a lower directory
    opaque.  Only real root can set trusted.* xattrs, so the file system answers for it here;
    the union logic reading it is fuse_overlay's own."""
    from fuse_overlay import whiteout
    from fuse_overlay.layers import LayerStack

    top, base = tmp_path / "top", tmp_path / "base"
    for layer in (top, base):
        (layer / "opq").mkdir(parents=True)
        (layer / "plain").mkdir()
    (top / "opq" / "new").write_text("n")
    (base / "opq" / "old").write_text("o")
    (base / "plain" / "old").write_text("o")
    marked = str(top / "opq")
    real_getxattr = os.getxattr

    def getxattr(path: Any, name: str, *, follow_symlinks: bool = True) -> bytes:
        if name == "trusted.overlay.opaque" and os.fspath(path) == marked:
            return b"y"
        return real_getxattr(path, name, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(whiteout.os, "getxattr", getxattr)
    stack = LayerStack([str(top), str(base)])
    assert sorted(stack.list_dir("/opq")) == ["new"]
    assert stack.lookup("/opq/old") is None
    assert sorted(stack.list_dir("/plain")) == ["old"]
    monkeypatch.setattr(whiteout.os, "getxattr", real_getxattr)
    assert sorted(LayerStack([str(top), str(base)]).list_dir("/opq")) == ["new", "old"]
