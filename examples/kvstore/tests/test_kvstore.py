"""How the example project tests itself with the sandbox plugin."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT

APP = [f"{PROJECT}:/app:ro"]


def test_client_in_another_container_reaches_the_server(kv_server: Any, sandbox: Any) -> None:
    """Server in one container, client in another (host network): through the published
    port."""
    host, port = kv_server.port(7000)
    client = sandbox.container(
        "host", network="host", volumes=APP,
        command=[sys.executable, "/app/kvstore.py", "call", host, str(port),
                 "SET colour blue", "GET colour", "GET missing"])
    assert client.wait(timeout=30) == 0, client.logs()
    assert client.logs().split() == ["OK", "blue", "NONE"]


def test_the_test_process_reaches_it_too(kv_server: Any) -> None:
    host, port = kv_server.port(7000)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"SET size 3\nGET size\n")
        with sock.makefile() as answers:
            assert [answers.readline().strip() for _ in range(2)] == ["OK", "3"]


def test_server_persists_inside_its_container(kv_server: Any) -> None:
    """The data file lives in the server container's writable layer, not on the host."""
    with socket.create_connection(kv_server.port(7000), timeout=10) as sock:
        sock.sendall(b"SET colour blue\n")
        with sock.makefile() as answers:
            assert answers.readline().strip() == "OK"
    assert ("A", "/data/kv.json") in kv_server.diff()
    assert '"colour": "blue"' in kv_server.path("/data/kv.json").read_text()
    assert not os.path.exists("/data/kv.json")


@pytest.mark.container(isolate=True)
def test_server_logic_in_an_isolated_body(tmp_path: Path) -> None:
    """The test body itself runs in a fresh container: it may bind ports and write /etc."""
    import threading

    sys.path.insert(0, str(PROJECT))
    import kvstore

    with open("/etc/kvstore.conf", "w") as f:       # gone after the test
        f.write("port=0\n")
    server = kvstore.Server(0, str(tmp_path / "kv.json"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert kvstore.call("127.0.0.1", port, ["SET a 1", "GET a"]) == ["OK", "1"]
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "kv.json").read_text() == '{"a": "1"}'


@pytest.mark.container(image=["host"], env={"KV_MODE": "test"})
def test_parametrized_over_images(container: Any) -> None:
    assert container.run("echo $KV_MODE").stdout == "test\n"
