"""Fixtures of the runtime and lifecycle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import lifecycle as lc
from sandbox.containers import Engine
from sandbox.store import Store


@pytest.fixture
def engine(session_store: Path, busybox_image: str):
    """An engine on the session store; containers listed in ``engine.made`` are removed."""
    eng = Engine(Store(session_store))
    made: list[str] = []
    eng.made = made  # type: ignore[attr-defined]
    yield eng
    for s in lc.list_containers(eng, all=True):
        if s.id in made:
            lc.remove(eng, s.id, force=True, volumes=True)
