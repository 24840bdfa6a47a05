"""Every union scenario observed identically on kernel overlayfs, fuse_overlay and a plain dir.

The scenarios live in fo_scenarios.py; all of them run in one user+mount namespace per session
(fo_harness.py), each on fresh layers and a fresh mount.
"""

from __future__ import annotations

from typing import Any

import fo_scenarios
import pytest
from fo_support import fuse_overlayfs_reason, kernel_overlay_reason, run_harness

pytestmark = [pytest.mark.requires_userns, pytest.mark.requires_fuse]

NAMES = sorted(fo_scenarios.SCENARIOS)


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


@pytest.mark.parametrize("name", NAMES)
def test_same_as_oracle(observed: dict[str, dict[str, Any]], name: str) -> None:
    sc = fo_scenarios.SCENARIOS[name]
    ours = observed["fuse"][name]
    _no_exception("fuse_overlay", ours)
    if sc.oracle == "expect":
        assert ours == sc.expect
        return
    if sc.oracle not in observed:
        pytest.skip(f"oracle {sc.oracle} unavailable")
    theirs = observed[sc.oracle][name]
    _no_exception(sc.oracle, theirs)
    assert ours == theirs


@pytest.mark.parametrize("name", [n for n in NAMES if fo_scenarios.SCENARIOS[n].plain])
def test_same_as_plain_directory(observed: dict[str, dict[str, Any]], name: str) -> None:
    """The plain directory is the oracle of last resort (unionmount-testsuite ``--no``)."""
    ours, plain = observed["fuse"][name], observed["plain"][name]
    _no_exception("plain", plain)
    assert ours == plain
