"""Images from ``sandbox build`` run the same under Podman (the store is an OCI layout)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent.parent / "build_corpus"

pytestmark = [pytest.mark.slow, pytest.mark.requires_subuid,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], dict[str, str]]]:
    """One rootless podman storage for the module, in a temp HOME (removed inside its user
    namespace: the layers belong to the subordinate range)."""
    import tempfile

    base = tmp_path_factory.mktemp("podman")
    home = base / "home"
    home.mkdir(mode=0o700)
    # short: conmon's attach socket path (runtime dir + 64-hex id) must fit in 108 bytes,
    # or every run waits for conmon's 20 s timeout
    run_dir = Path(tempfile.mkdtemp(prefix="pm-"))
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(run_dir),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"))
    argv = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend",
            "file"]
    yield argv, env
    subprocess.run([*argv, "unshare", "rm", "-rf", str(home)], env=env, capture_output=True,
                   check=False)
    shutil.rmtree(run_dir, ignore_errors=True)


CHECKS = [
    ("whiteouts", "corpus/whiteouts", [([], "new\nkeep\ngone\n")]),
    ("every_instruction", "corpus/every:1", [
        ([], "app says hello\n"),
        (["--entrypoint", "", "IMAGE", "sh", "-c", "id -u; stat -c %u:%g /home/app/README; pwd"],
         "1000\n1000:1000\n/srv/app\n")]),
]


def test_runs_the_same_under_podman(cli, busybox_image: str, session_store: Path,
                                    tmp_path: Path,
                                    podman: tuple[list[str], dict[str, str]]) -> None:
    layout = tmp_path / "layout"
    layout.symlink_to(session_store)
    pod, env = podman
    for case, tag, runs in CHECKS:
        proc = cli("build", "-t", tag, str(CORPUS / case), timeout=180)
        assert proc.returncode == 0, proc.stderr
        name, _, version = tag.partition(":")
        ref = f"docker.io/{name}:{version or 'latest'}"
        pulled = subprocess.run([*pod, "pull", "-q", f"oci:{layout}:{ref}"], env=env,
                                capture_output=True, text=True, check=False, timeout=300)
        if pulled.returncode != 0:
            pytest.skip(f"podman cannot pull here: {pulled.stderr.strip()[-200:]}")
        image = pulled.stdout.strip().splitlines()[-1]
        for argv, stdout in runs:
            args = [a if a != "IMAGE" else image for a in argv] if argv else [image]
            ran = subprocess.run([*pod, "run", "--rm", "--network", "none", *args], env=env,
                                 capture_output=True, text=True, check=False, timeout=120)
            assert ran.returncode == 0, ran.stderr
            assert ran.stdout == stdout, (case, argv)
