"""Shared fixtures and capability probes for the whole suite.

Capabilities are probed once; tests marked ``requires_userns``, ``requires_subuid`` or
``requires_fuse`` are skipped with the reason when the machine lacks them (runc's
``requires rootless``). Nothing here needs root.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "sandbox"))  # registry_fixtures, imagetest_helpers

import imagekit  # noqa: E402

# pytester for tests/pytest_plugin (pytest allows pytest_plugins only in the top conftest)
pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    """Every command the suite starts gets SIGINT and SIGQUIT as a terminal's shell gives them.

    A shell without job control (a script, a CI step) starts a background command
    (``pytest ... &``) with both ignored, and an ignored signal stays ignored across fork and
    exec: Python then installs no Ctrl-C handler, and the tests of what Ctrl-C does to a
    command (exit 130, nothing left behind) would watch it run to the end instead. A handled
    signal is reset to the default in the child at exec, which is what a command started from
    an interactive shell has."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@functools.cache
def userns_problem() -> str | None:
    """None when unprivileged user namespaces work here, else why not."""
    if shutil.which("unshare") is None:
        return "util-linux unshare missing"
    proc = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return f"unprivileged user namespaces unavailable: {proc.stderr.strip()}"
    return None


@functools.cache
def subuid_problem() -> str | None:
    from sandbox.runtime.idmap import detect_mapping

    mapping = detect_mapping()
    return None if mapping.mode == "subuid" else mapping.reason


@functools.cache
def fuse_problem() -> str | None:
    from sandbox.drivers import probe_fuse

    result = probe_fuse()
    return None if result == "ok" else result


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, probe in (("requires_userns", userns_problem),
                          ("requires_subuid", subuid_problem),
                          ("requires_fuse", fuse_problem)):
        if item.get_closest_marker(marker) is not None:
            problem = probe()
            if problem:
                pytest.skip(problem)


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store shared by the session's tests (images are imported once)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return tmp_path_factory.mktemp(f"store-{worker}")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if imagekit.busybox_path() is None:
        pytest.skip("a static busybox is needed (apt-get install busybox-static)")
    work = tmp_path_factory.mktemp("busybox")
    return imagekit.make_busybox_tar(work / "busybox.tar", work)


@pytest.fixture(scope="session")
def busybox_image(session_store: Path, busybox_tar: Path) -> str:
    """``busybox`` imported into the session store; returns the image name."""
    problem = userns_problem()
    if problem:
        pytest.skip(problem)
    from sandbox.images import ImageStore
    from sandbox.store import Store

    ImageStore(Store(session_store)).import_rootfs(str(busybox_tar), ["busybox"])
    return "busybox"


@pytest.fixture
def sandbox_env(session_store: Path) -> dict[str, str]:
    """Environment for ``python -m sandbox`` runs against the session store."""
    env = dict(os.environ)
    env["SANDBOX_ROOT"] = str(session_store)
    env.pop("SANDBOX_STORAGE_DRIVER", None) if os.environ.get(
        "SANDBOX_STORAGE_DRIVER") == "" else None
    return env


class CLI:
    """Runs the ``sandbox`` command as a user would."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sandbox", *args], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "sandbox", *args], env=self.env,
                                text=True, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def cli(sandbox_env: dict[str, str]) -> CLI:
    return CLI(sandbox_env)


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory to bind into containers, removed even if the container chowned it."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    yield d
    if subuid_problem() is None:
        from sandbox.runtime.userns import chown_tree, run_in_userns

        run_in_userns(chown_tree, str(d), 0, 0)


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Distribution registries started on first use (anon, basic, token, tls); stopped at end."""
    from registry_fixtures import Registries

    regs = Registries(tmp_path_factory.mktemp("registries"))
    try:
        yield regs
    finally:
        regs.stop()


@pytest.fixture
def fake() -> Iterator[object]:
    """A scriptable fake registry on 127.0.0.1 (``registry_fixtures.FakeRegistry``)."""
    from registry_fixtures import FakeRegistry

    f = FakeRegistry()
    try:
        yield f
    finally:
        f.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Tests unpack images whose files belong to subordinate uids (with subuid ranges) into
    their temporary directories. Give them back to the user at the end, so that pytest's own
    clean-up of old base temp dirs (it keeps three) can delete them later instead of leaving
    undeletable "garbage-*" dirs and failing later runs with a ResourceWarning. Done once, by
    the controller (xdist workers' dirs are inside its base temp)."""
    if hasattr(session.config, "workerinput") or subuid_problem() is not None:
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or not os.path.isdir(basetemp):
        return
    from sandbox.runtime.userns import chown_tree, run_in_userns

    try:
        run_in_userns(chown_tree, str(basetemp), 0, 0)  # root inside is the user outside
    except Exception as exc:  # noqa: BLE001 - the run's result stands; say why, once
        print(f"\nconftest: could not give {basetemp}'s files back to the user: {exc}",
              file=sys.stderr)
