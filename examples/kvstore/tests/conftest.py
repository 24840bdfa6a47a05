"""The kvstore server runs in one container, published on a host port; clients run in others."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kv_server(sandbox: Any) -> Any:
    """The server in its own container (loopback-only network), port 7000 published."""
    server = sandbox.container(
        "host",
        command=[sys.executable, "/app/kvstore.py", "serve", "7000", "/data/kv.json"],
        volumes=[f"{PROJECT}:/app:ro"],
        ports=["7000"],
    )
    for _ in range(100):
        if "listening on 7000" in server.logs():
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the kvstore server did not start:\n{server.logs()}")
    return server
