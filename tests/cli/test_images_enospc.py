"""A full disk while a pull downloads or a load unpacks: one line naming the cause, exit 125,
nothing half-written. The store is a 1 MiB tmpfs mounted in a user+mount namespace of our own
(``unshare -Urm``), so no privilege is needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sandbox"))

from imagetest_helpers import serve_image  # noqa: E402
from registry_fixtures import FakeRegistry, make_image, random_image, write_oci_layout  # noqa: E402

pytestmark = pytest.mark.requires_userns

SCRIPT = """
set -u
mount -t tmpfs -o size=1m tmpfs "$MNT" || exit 99
export SANDBOX_ROOT="$MNT/root"
"$PY" -m sandbox "$@" >/dev/null 2>"$MNT/err"
echo "rc=$?"
echo "stderr=$(cat "$MNT/err")"
echo "tmp=$(ls -A "$SANDBOX_ROOT/tmp" 2>/dev/null | wc -l)"
echo "layers=$(ls -A "$SANDBOX_ROOT/layers" 2>/dev/null | wc -l)"
echo "images=$("$PY" -m sandbox images -aq | wc -l)"
"""


def _on_tiny_disk(tmp_path: Path, *args: str) -> dict[str, str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", SCRIPT, "sh", *args],
                          env={"MNT": str(mnt), "PY": sys.executable, "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                               "XDG_CONFIG_HOME": str(tmp_path / "config")},
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode == 99 or "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def test_disk_full_while_a_load_unpacks(tmp_path: Path) -> None:
    img = make_image([{"zeros": b"\0" * 3_000_000}])  # a few kB gzipped, 3 MB unpacked
    layout = tmp_path / "layout"
    write_oci_layout(layout, img.blobs, img.manifest, img.media_type, tag="example.com/big:1")
    out = _on_tiny_disk(tmp_path, "load", "-i", str(layout))
    assert out["rc"] == "125", out
    assert "\n" not in out["stderr"] and out["stderr"].startswith("sandbox: ")
    assert "No space left on device" in out["stderr"] and "free some disk space" in out["stderr"]
    assert (out["tmp"], out["layers"], out["images"]) == ("0", "0", "0"), out


def test_disk_full_while_a_pull_downloads(tmp_path: Path, fake: FakeRegistry) -> None:
    img = random_image([2_000_000], seed=13)  # incompressible: the blob itself does not fit
    serve_image(fake, "big/img", img)
    out = _on_tiny_disk(tmp_path, "pull", f"{fake.host}/big/img")
    assert out["rc"] == "125", out
    assert out["stderr"].startswith("sandbox: no space left on the device of ")
    assert "\n" not in out["stderr"]
    assert (out["tmp"], out["layers"], out["images"]) == ("0", "0", "0"), out
