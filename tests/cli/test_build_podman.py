"""Images from ``sandbox build`` run the same under Podman after ``sandbox save``.

The image is built by ``sandbox build``, written by ``sandbox save`` (docker-archive and
oci-archive), loaded by ``podman load`` into a private rootless podman storage and run by
``podman run``; its output and config must be what ``sandbox run`` gives. Podman failing to
load or run the archive fails the test: only a missing podman skips it.

Without /etc/subuid ranges podman cannot chown layer files to their owners; it is run with
``overlay.ignore_chown_errors`` then (as ``sandbox`` in single-uid mode, files belong to root),
and the ``USER 1000`` default run is left out (neither engine can switch to an unmapped user).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.runtime.idmap import detect_mapping

pytestmark = [pytest.mark.slow, pytest.mark.requires_userns,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")]

SUBUID = detect_mapping().mode == "subuid"

DOCKERFILE = """\
FROM busybox
ENV GREETING=hello
WORKDIR /srv/app
COPY --chown=1000:1000 app.sh ./
RUN mkdir -p /var/www/old && echo old > /var/www/old/f && echo built > built.txt
RUN rm /etc/os-release && rm -rf /var/www && mkdir -p /var/www && echo n > /var/www/new
USER 1000
ENTRYPOINT ["/srv/app/app.sh"]
CMD ["default-arg"]
"""

APP = """\
#!/bin/sh
echo "uid=$(id -u) pwd=$(pwd) greeting=$GREETING args=$*"
cat built.txt
stat -c '%u:%g %a' app.sh
test -e /etc/os-release || echo os-release-gone
ls /var/www
"""


class Podman:
    """A rootless podman with its own storage (a temp HOME) for the module."""

    def __init__(self, home: Path, run_dir: Path) -> None:
        self.env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(run_dir),
                        XDG_CONFIG_HOME=str(home / ".config"),
                        XDG_DATA_HOME=str(home / ".local/share"))
        # runc: crun needs a cgroup v2 delegation the test machines may not have;
        # cgroupfs and file events: no systemd user session
        self.argv = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                     "--events-backend", "file"]
        if not SUBUID:
            # one uid only: podman cannot chown layer files to 1000 (as sandbox, it keeps root)
            self.argv += ["--storage-driver", "overlay",
                          "--storage-opt", "overlay.ignore_chown_errors=true"]

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], env=self.env, capture_output=True,
                              text=True, check=False, timeout=timeout)

    def ok(self, *args: str) -> str:
        proc = self(*args)
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr.strip()[-2000:]}"
        return proc.stdout


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    base = tmp_path_factory.mktemp("podman")
    home = base / "home"
    home.mkdir(mode=0o700)
    # short: conmon's attach socket path (runtime dir + 64-hex id) must fit in 108 bytes,
    # or every run waits for conmon's 20 s timeout
    run_dir = Path(tempfile.mkdtemp(prefix="pm-"))
    pod = Podman(home, run_dir)
    yield pod
    # the layers belong to the subordinate range: remove them inside podman's namespace
    pod("unshare", "rm", "-rf", str(home), timeout=120)
    shutil.rmtree(run_dir, ignore_errors=True)


def _image(store: Path, name: str) -> Any:
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store(store)).get(name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, session_store: Path,
          busybox_image: str) -> str:
    env = dict(os.environ, SANDBOX_ROOT=str(session_store))
    ctx = tmp_path_factory.mktemp("podman-ctx")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app.sh").write_text(APP)
    os.chmod(ctx / "app.sh", 0o755)
    proc = subprocess.run([sys.executable, "-m", "sandbox", "build", "-t", "podman-interop:1",
                           str(ctx)], env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return "podman-interop:1"


RUNS = [  # (run options, arguments after the image, first output line, needs subuid)
    ([], [], "uid=1000 pwd=/srv/app greeting=hello args=default-arg\n", True),
    (["--user", "0"], [], "uid=0 pwd=/srv/app greeting=hello args=default-arg\n", False),
    (["--user", "0"], ["x", "y"], "uid=0 pwd=/srv/app greeting=hello args=x y\n", False),
]


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_saved_image_runs_the_same_under_podman(fmt: str, cli, built: str, podman: Podman,
                                                session_store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    proc = cli("save", "--format", fmt, "-o", str(archive), built, timeout=120)
    assert proc.returncode == 0, proc.stderr
    podman("rmi", "-f", f"docker.io/library/{built}")
    loaded = podman.ok("load", "-i", str(archive))
    assert f"Loaded image: docker.io/library/{built}" in loaded
    image = _image(session_store, built)
    # the same config blob: podman's image id is sandbox's
    inspect = json.loads(podman.ok("image", "inspect", f"docker.io/library/{built}"))[0]
    assert "sha256:" + inspect["Id"].removeprefix("sha256:") == image.id
    config = image.config["config"]
    for key in ("Entrypoint", "Cmd", "WorkingDir", "User"):
        assert inspect["Config"].get(key) == config.get(key), key
    assert set(config["Env"]) <= set(inspect["Config"]["Env"])
    assert len(inspect["RootFS"]["Layers"]) == len(image.diff_ids)
    history = [h.get("created_by", "") for h in inspect["History"]]
    assert history == [h.get("created_by", "") for h in image.config["history"]]
    owner = "1000:1000" if SUBUID else "0:0"
    for options, args, first_line, needs_subuid in RUNS:
        if needs_subuid and not SUBUID:
            continue  # USER 1000 is not mapped with one uid, under either engine
        expected = f"{first_line}built\n{owner} 755\nos-release-gone\nnew\n"
        ran = podman("run", "--rm", "--network", "none", *options,
                     f"docker.io/library/{built}", *args)
        assert ran.returncode == 0, f"podman run {options}: {ran.stderr.strip()[-2000:]}"
        assert ran.stdout == expected, options
        ours = cli("run", "--rm", *options, built, *args, timeout=120)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == expected, options
