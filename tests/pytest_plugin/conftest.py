"""Pytester helpers for the plugin's tests: every inner run gets its own store."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

# ``pytest_plugins = ["pytester"]`` is refused in a conftest below the rootdir when the whole
# ``tests/`` tree runs, so the plugin is registered here instead.


@functools.cache
def userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                          capture_output=True, check=False)
    return proc.returncode == 0


@functools.cache
def lifecycle_available() -> bool:
    try:
        import sandbox.lifecycle  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("requires_userns") and not userns_works():
            item.add_marker(pytest.mark.skip(reason="unprivileged user namespaces unavailable"))
        if item.get_closest_marker("requires_lifecycle") and not lifecycle_available():
            item.add_marker(pytest.mark.skip(reason="sandbox.lifecycle is not in this tree"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_lifecycle: needs sandbox.lifecycle")
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def run_inner(pytester: pytest.Pytester, store_root: Path,
              monkeypatch: pytest.MonkeyPatch) -> Callable[..., pytest.RunResult]:
    """``pytest`` in a subprocess (it forks into namespaces) with its own store."""
    monkeypatch.setenv("SANDBOX_ROOT", str(store_root))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_TESTRUNUID", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)

    def run(*args: str, timeout: float = 120) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                             f"--sandbox-root={store_root}", *args,
                                             timeout=timeout)
    return run


@pytest.fixture
def containers_left(store_root: Path) -> Callable[[], list[str]]:
    def left() -> list[str]:
        d = store_root / "containers"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.exists() else []
    return left


def busybox_available() -> bool:
    return any(os.path.exists(p) for p in ("/bin/busybox", "/usr/bin/busybox"))
