"""A real workload: unpack, byte-compile, remove the standard library; same tree as the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
from fo_support import kernel_overlay_reason, run_harness


@pytest.mark.slow
@pytest.mark.requires_userns
@pytest.mark.requires_fuse
def test_stdlib_untar_compile_remove_like_kernel(tmp_path: Path) -> None:
    kinds = ["fuse"] + ([] if kernel_overlay_reason() else ["kernel"])
    answer = run_harness({"root": str(tmp_path), "mode": "workload", "kinds": kinds},
                         timeout=1200)
    ours = answer["fuse"]
    assert "exception" not in ours, ours.get("exception")
    pycs = [p for p in ours["snapshot"] if p.endswith(".pyc")]
    assert len(pycs) > 100
    assert "stdlib" not in ours["after_rm"]
    if "kernel" in answer:
        theirs = answer["kernel"]
        assert "exception" not in theirs, theirs.get("exception")
        assert ours["snapshot"] == theirs["snapshot"]
        assert ours["after_rm"] == theirs["after_rm"]
