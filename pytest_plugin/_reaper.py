"""``python -m pytest_plugin._reaper ROOT OWNER``: removes a pytest process's containers.

Started by the factory on its first container, in a session of its own (Ctrl-C in the terminal
does not reach it), with a pipe on stdin that carries one command a line:

- ``rm ID``: a test is over and its container goes: removed here, in the background, so the
  test process does not wait for the kill, the unmounts and the directory removal;
- ``done``: the session ended normally; finish the removals and exit.

EOF without ``done`` means the pytest process died (SIGKILL, a crashed xdist worker): every
container labelled with its ``OWNER`` (``pid:starttime``) is removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any


def _engine(root: str) -> Any:
    from sandbox.containers import Engine
    from sandbox.store import Store

    return Engine(Store(root))


def remove_one(engine: Any, cid: str) -> None:
    try:
        from sandbox import lifecycle

        lifecycle.remove(engine, cid, force=True, volumes=True)
    except Exception as exc:  # noqa: BLE001 - best effort, then the directory itself
        print(f"reaper: removing {cid}: {exc!r}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            engine.remove_dir(cid)


def reap(root: str, owner: str) -> int:
    """Remove every container labelled with ``owner`` (not the ones kept on purpose)."""
    from pytest_plugin.factory import LABEL_OWNER

    engine = _engine(root)
    removed = 0
    for cid in list(engine.store.iter_containers()):
        try:
            labels = engine.load_config(cid).get("spec", {}).get("labels") or {}
        except (OSError, ValueError):
            continue
        if labels.get(LABEL_OWNER) != owner or labels.get("io.rootless-sandbox.pytest.kept"):
            continue
        remove_one(engine, cid)
        removed += 1
    return removed


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    root, owner = sys.argv[1], sys.argv[2]
    engine = None
    pending = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line == b"done":
                return 0
            if line.startswith(b"rm "):
                engine = engine or _engine(root)
                remove_one(engine, line[3:].decode())
    reap(root, owner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
