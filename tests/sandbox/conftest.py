"""Registry fixtures for tests/sandbox (helpers live in ``registry_fixtures.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_fixtures import DirStore

from sandbox.registry import RegistryClient


@pytest.fixture
def auth_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every credentials and trust location into ``tmp_path`` (nothing of the user's)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    for var in ("REGISTRY_AUTH_FILE", "SANDBOX_INSECURE_REGISTRIES", "SANDBOX_CERTS_D"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def client(auth_env: Path) -> Iterator[RegistryClient]:
    with RegistryClient(retries=2, backoff=0.01, timeout=20) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> DirStore:
    return DirStore(tmp_path / "store")




@pytest.fixture
def images(tmp_path: Path) -> Any:
    """An image store in ``tmp_path/root``."""
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store(tmp_path / "root"))


@pytest.fixture
def rc(auth_env: Path) -> Iterator[RegistryClient]:
    """A registry client that gives up fast (tests of failures)."""
    with RegistryClient(retries=1, backoff=0.01, timeout=10) as c:
        yield c
