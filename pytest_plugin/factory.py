"""The session-scoped factory: the engine, per-worker scratch dirs, containers and retention.

Created from ``config`` at configure time (pytest ``tmpdir.py``'s ``TempPathFactory``), used by
every fixture. Each pytest process (the controller, or each pytest-xdist worker) owns the
containers it starts; they carry labels naming the session and the owner's pid and start time so
that a reaper process (started on the first container) removes them if this process dies, and
the next run removes what a SIGKILL of both left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import pytest

from pytest_plugin.marker import ContainerRequest, Settings

if TYPE_CHECKING:
    from pytest_plugin.fixtures.handle import Container

__all__ = ["SandboxFactory", "FACTORY_KEY", "LABEL_SESSION", "LABEL_OWNER", "LABEL_TEST"]

FACTORY_KEY = pytest.StashKey["SandboxFactory"]()
LABEL_SESSION = "io.rootless-sandbox.pytest.session"
LABEL_OWNER = "io.rootless-sandbox.pytest.owner"  # "pid:starttime" of the pytest process
LABEL_TEST = "io.rootless-sandbox.pytest.test"
KEEP_ALIVE = ("sleep", "infinity")
PREPARE_AHEAD = 2  # isolated tests whose containers are set up ahead: two producers overlap
START_AHEAD = 2  # tests whose ``container`` fixture's container is started ahead
logger = logging.getLogger(__name__)


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def lifecycle_module() -> Any:
    """``sandbox.lifecycle`` or a clear skip when this engine does not have it yet."""
    try:
        from sandbox import lifecycle
    except ImportError as exc:
        pytest.skip(f"the container fixture needs sandbox.lifecycle ({exc})")
    return lifecycle


class SandboxFactory:
    """One per pytest process: engine, owned containers, reaper, retention."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.worker_id = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.session_id = os.environ.get("PYTEST_SANDBOX_SESSION") or os.urandom(6).hex()
        self.owner = f"{os.getpid()}:{_start_time(os.getpid())}"
        self._engine: Any = None
        self._owned: dict[str, Container] = {}
        self._handed: list[str] = []
        self._reaper: subprocess.Popen[bytes] | None = None
        self._scratch: str | None = None
        self._isolate_pool: dict[str, Any] = {}
        self._isolate_state: dict[str, tuple[str, Any]] = {}
        self.kept: list[Container] = []
        self._default_image: str | None = None
        self.current_item: pytest.Item | None = None
        self.next_item: pytest.Item | None = None  # pytest_runtest_protocol's nextitem
        self._ahead: dict[str, tuple[ContainerRequest, Any]] = {}  # nodeid -> (req, pending)
        self._prepared: dict[str, tuple[Any, Any]] = {}  # nodeid -> (spec, Prepared), isolate
        self._in_use: dict[str, Any] = {}  # spec id -> the Prepared a test body runs in
        self._draining: dict[str, Any] = {}  # spec id -> a discarded Prepared not yet reaped
        self._reaping: list[Any] = []  # discarded Prepared whose directory was reused at once
        self._order: dict[int, int] | None = None  # id(item) -> its place in session.items

    # -- engine --------------------------------------------------------------------------------
    @property
    def engine(self) -> Any:
        if self._engine is None:
            from sandbox.containers import Engine
            from sandbox.store import Store

            engine = Engine(Store(self.settings.root) if self.settings.root else None,
                            storage_driver=self.settings.storage_driver)
            engine.store.ensure()
            self._engine = engine
            self.clean_stale()
        return self._engine

    def default_image(self) -> str:
        if self._default_image is None:
            hooked = self.config.hook.pytest_sandbox_default_image(config=self.config)
            self._default_image = str(hooked) if hooked else "host"
        return self._default_image

    def scratch_dir(self) -> str:
        """A per-worker scratch dir (under pytest's basetemp, itself per xdist worker)."""
        if self._scratch is None:
            base = self.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
            self._scratch = tempfile.mkdtemp(prefix=f"sandbox-{self.worker_id}-", dir=base)
        return self._scratch

    def labels(self, item: pytest.Item | None) -> dict[str, str]:
        labels = {LABEL_SESSION: self.session_id, LABEL_OWNER: self.owner}
        if item is not None:
            labels[LABEL_TEST] = item.nodeid
        return labels

    # -- stale containers ----------------------------------------------------------------------
    def clean_stale(self) -> int:
        """Remove containers whose pytest owner is gone (a SIGKILL'd run), then what
        ``lifecycle.cleanup_stale`` finds (dead monitors)."""
        engine = self._engine
        removed = 0
        with engine.store.lock("pytest-sandbox-stale"):
            for cid in list(engine.store.iter_containers()):
                try:
                    labels = engine.load_config(cid).get("spec", {}).get("labels") or {}
                except (OSError, ValueError):
                    continue
                owner = labels.get(LABEL_OWNER)
                if not owner:
                    continue
                pid, _, start = owner.partition(":")
                if pid.isdigit() and start.isdigit() and _start_time(int(pid)) == int(start):
                    continue
                if labels.get("io.rootless-sandbox.pytest.kept") == "1":
                    continue
                removed += self._force_remove(cid)
            with contextlib.suppress(ImportError):
                from sandbox import lifecycle

                with contextlib.suppress(Exception):
                    removed += int(lifecycle.cleanup_stale(engine) or 0)
        if removed:
            logger.info("removed %d container(s) left by an earlier run", removed)
        return removed

    def _force_remove(self, cid: str) -> int:
        try:
            from sandbox import lifecycle
        except ImportError:
            self._engine.remove_dir(cid)
            return 1
        try:
            lifecycle.remove(self._engine, cid, force=True, volumes=True)
        except Exception:  # noqa: BLE001 - best effort, then the directory itself
            with contextlib.suppress(Exception):
                self._engine.remove_dir(cid)
        return 1

    # -- reaper --------------------------------------------------------------------------------
    def _ensure_reaper(self) -> None:
        """Start (once) the process that removes our containers if this process dies, and the
        zygote that forks the engine's helpers (monitors, exec, isolated tests' set-up) for
        this large process (``sandbox._zygote``)."""
        if self._reaper is not None:
            return
        from sandbox import _zygote

        _zygote.start()
        root = self.engine.store.root
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "pytest_plugin._reaper", root, self.owner],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=_reaper_log(),
            start_new_session=True, close_fds=True)

    def _stop_reaper(self) -> None:
        """``done``: the reaper finishes the removals it was given, then exits; we wait."""
        if self._reaper is None:
            return
        with contextlib.suppress(OSError):
            assert self._reaper.stdin is not None
            self._reaper.stdin.write(b"done\n")
            self._reaper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._reaper.wait(timeout=120)
        self._reaper = None
        for cid in self._handed:  # whatever the reaper could not do, we do
            if os.path.isdir(self.engine.store.container_dir(cid)):
                self._force_remove(cid)
        self._handed.clear()

    def _hand_to_reaper(self, cid: str) -> bool:
        reaper = self._reaper
        if reaper is None or reaper.poll() is not None or reaper.stdin is None:
            return False
        try:
            reaper.stdin.write(f"rm {cid}\n".encode())
            reaper.stdin.flush()
        except OSError:
            return False
        self._handed.append(cid)
        return True

    # -- containers ----------------------------------------------------------------------------
    def run_options(self, req: ContainerRequest, labels: dict[str, str], *,
                    remove: bool = False) -> Any:
        from sandbox.containers import RunOptions, parse_volume

        # a test's container is thrown away (volatile); one that is not to be kept and runs
        # until it is removed (no command= of its own that may end) has its writable layer in
        # memory (RootfsSpec.scratch), readable while it runs, as the test and its report do
        kwargs: dict[str, Any] = dict(
            env=req.env, workdir=req.workdir or "", user=req.user, network=req.network,
            mounts=tuple(parse_volume(v) for v in req.volumes), labels=labels, remove=remove,
            storage_driver=req.storage_driver, volatile=True,
            scratch=req.layer == "memory" and req.keep == "none" and not req.command)
        from sandbox._record import fields as record_fields

        fields = set(record_fields(RunOptions))
        return RunOptions(**{k: v for k, v in kwargs.items() if k in fields})

    @staticmethod
    def host_options(lifecycle: Any, req: ContainerRequest) -> Any:
        """Docker's HostConfig part: the published ports."""
        if not req.ports:
            return None
        from sandbox._ports import parse_publish

        return lifecycle.HostOptions(ports=tuple(b for p in req.ports for b in parse_publish(p)))

    def start(self, req: ContainerRequest, item: pytest.Item | None) -> Container:
        """A running container for ``req`` (``sandbox run -d IMAGE sleep infinity``): the one
        :meth:`start_ahead` started for ``item`` while the previous test ran, else a new one."""
        from pytest_plugin.fixtures.handle import Container

        ahead = self._ahead.pop(item.nodeid, None) if item is not None else None
        if ahead is not None and ahead[0] != req:
            self._discard(ahead[1])
            ahead = None
        pending = ahead[1] if ahead is not None else self._launch(req, item)
        state = pending.result()
        container = Container(self, state, req)
        self._owned[container.id] = container
        return container

    def _launch(self, req: ContainerRequest, item: pytest.Item | None) -> Any:
        lifecycle = lifecycle_module()
        self._ensure_reaper()
        opts = self.run_options(req, self.labels(item))
        cmd = list(req.command or KEEP_ALIVE)
        from pytest_plugin.isolate import frozen_heap

        with frozen_heap():  # lifecycle forks its monitor from this process when it can
            return lifecycle.run_detached_async(self.engine, req.image, cmd, opts,
                                                self.host_options(lifecycle, req))

    def start_ahead(self, items: list[pytest.Item]) -> None:
        """Start the containers of ``items`` (the next tests, those that take the ``container``
        fixture) now, so that their monitors set them up while the current test runs, on the
        other core; :meth:`start` hands them over. A request that cannot start here is left to
        the test's own setup, which reports the error in the right place."""
        wanted = {it.nodeid for it in items}
        for nodeid in [n for n in self._ahead if n not in wanted]:
            self._discard(self._ahead.pop(nodeid)[1])  # its test did not take it (skipped)
        from pytest_plugin.plugin import item_request

        for item in items:
            if item.nodeid in self._ahead or "container" not in getattr(item, "fixturenames", ()):
                continue
            try:
                req = item_request(item)
                if req.isolate:
                    continue
                self._ahead[item.nodeid] = (req, self._launch(req, item))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - pytest.fail/skip too: the test reports it
                logger.debug("not starting %s ahead: %r", item.nodeid, exc)

    def _discard(self, pending: Any) -> None:
        """Remove a container started ahead for a test that did not take it."""
        try:
            state = pending.result()
        except Exception:  # noqa: BLE001 - it failed to start: nothing runs
            if os.path.isdir(pending.spec.container_dir):
                self._force_remove(pending.spec.id)
            return
        if not self._hand_to_reaper(state.id):
            self._force_remove(state.id)

    def remove(self, container: Container) -> None:
        if container.removed:
            return
        self._owned.pop(container.id, None)
        container.removed = True
        if not self._hand_to_reaper(container.id):  # removed in the background
            self._force_remove(container.id)

    def keep(self, container: Container) -> None:
        """Retention: leave it running and drop it from what the session removes."""
        self._owned.pop(container.id, None)
        container.kept = True
        self.kept.append(container)
        with contextlib.suppress(Exception):
            self._mark_kept(container.id)

    def _mark_kept(self, cid: str) -> None:
        store = self.engine.store
        path = os.path.join(store.container_dir(cid), "config.json")
        cfg = store.read_json(path)
        cfg.setdefault("spec", {}).setdefault("labels", {})["io.rootless-sandbox.pytest.kept"] = "1"
        store.write_json(path, cfg)

    def upcoming(self, item: pytest.Item | None, count: int = PREPARE_AHEAD) -> list[pytest.Item]:
        """``item`` (the next test) and the ones after it in the session's run order."""
        if item is None:
            return []
        items = item.session.items
        if self._order is None or len(self._order) != len(items):
            self._order = {id(it): i for i, it in enumerate(items)}
        i = self._order.get(id(item))
        return [item] if i is None else list(items[i:i + count])

    def prepare_ahead(self, items: list[pytest.Item]) -> None:
        """Set up the containers of ``items`` (the next tests, those that are
        ``isolate=True``) now, each in a forked helper, so that their namespaces and mounts
        are made on the other core while the current test runs; :meth:`take_prepared` hands
        them over. The helpers are forked by the session's zygote (or by this process where it
        has no zygote and no threads; else each container is set up in line)."""
        wanted = {it.nodeid for it in items}
        for nodeid in [n for n in self._prepared if n not in wanted]:
            self._drop_prepared(self._prepared.pop(nodeid))  # its test did not take it
        from pytest_plugin.plugin import item_request
        from sandbox.runtime.process import prepare_callable

        for item in items:
            if item.nodeid in self._prepared or item.get_closest_marker("container") is None:
                continue
            try:
                req = item_request(item)
                if not req.isolate or not _can_prepare():
                    continue
                spec = self.isolate_spec(item, req)
                from pytest_plugin.isolate import frozen_heap

                with frozen_heap():
                    self._prepared[item.nodeid] = (
                        spec, prepare_callable(spec, self.engine.mapping))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - the test's own call reports it
                logger.debug("not preparing %s ahead: %r", item.nodeid, exc)

    def take_prepared(self, item: pytest.Item, req: ContainerRequest) -> tuple[Any, Any]:
        """(spec, prepared container) for ``item``: set up ahead, or now where it can be
        (``_can_prepare``); else (spec, None), for ``run_callable``."""
        found = self._prepared.pop(item.nodeid, None)
        if found is None:
            from sandbox.runtime.process import prepare_callable

            spec = self.isolate_spec(item, req)
            if not _can_prepare():
                return spec, None
            from pytest_plugin.isolate import frozen_heap

            with frozen_heap():
                found = (spec, prepare_callable(spec, self.engine.mapping))
        self._in_use[found[0].id] = found[1]
        return found

    def writable_layer(self, spec: Any) -> str | None:
        """Where an isolated test's writable layer can be read now (None: it was in memory and
        is gone)."""
        prepared = self._in_use.get(spec.id)
        if prepared is not None:
            try:
                return str(prepared.upper())
            except Exception:  # noqa: BLE001 - its setup failed: nothing was written
                return None
        return None if spec.rootfs.scratch else str(spec.rootfs.upper)

    def _drop_prepared(self, pair: tuple[Any, Any]) -> None:
        spec, prepared = pair
        prepared.discard()
        self._draining[spec.id] = prepared
        self.release_isolated(spec, keep=False)

    def isolate_spec(self, item: pytest.Item, req: ContainerRequest) -> Any:
        """The spec of a container whose PID 1's child will be the forked test body."""
        from sandbox.containers import RunOptions, parse_volume
        from sandbox.spec import Mount

        self._ensure_reaper()
        binds = self._isolate_binds(req)
        workdir = req.workdir or os.getcwd()
        key = json.dumps([req.image, req.network, req.volumes, req.env, workdir,
                          req.storage_driver, binds, req.keep, req.layer])
        pooled = self._isolate_pool.pop(key, None)
        if pooled is not None:
            draining = self._draining.pop(pooled.id, None)
            if draining is not None:
                if pooled.rootfs.scratch:  # its mounts are in its own namespaces, not on disk
                    self._reaping.append(draining)
                else:
                    draining.reap()  # its last container's mounts must be gone
            self._reaping = [p for p in self._reaping if not p.reap(block=False)]
            return pooled
        mounts = [parse_volume(v) for v in req.volumes]
        mounts += [Mount(target=p, type="bind", source=p, readonly=ro) for p, ro in binds]
        # a layer that is not kept lives in memory (RootfsSpec.scratch) where the body runs in a
        # prepared container, whose layer the diff of a failure can still read
        opts = RunOptions(env=req.env, workdir=workdir, network=req.network,
                          mounts=tuple(mounts), remove=False, labels=self.labels(item),
                          storage_driver=req.storage_driver, volatile=True,
                          scratch=req.layer == "memory" and req.keep == "none" and _can_prepare())
        spec = self.engine.create(req.image, ["true"], opts)
        self._isolate_state[spec.id] = (key, _snapshot(spec))
        return spec

    def release_isolated(self, spec: Any, *, keep: bool) -> None:
        """After an isolated test: keep its files, or reuse its container directory for the
        next test when the test left it exactly as created (nothing written to the writable
        layer or the bound /etc files: every namespace, mount and tmpfs is new each time
        anyway), else remove it."""
        prepared = self._in_use.pop(spec.id, None)
        if prepared is not None:  # its container goes now; its helper is reaped before reuse
            prepared.discard()
            self._draining[spec.id] = prepared
        key, snap = self._isolate_state.get(spec.id, ("", None))
        if keep:
            self._isolate_state.pop(spec.id, None)
            return
        if snap is not None and key not in self._isolate_pool and _snapshot(spec) == snap:
            self._isolate_pool[key] = spec
            return
        self._isolate_state.pop(spec.id, None)
        self._reap_draining(spec.id)
        with contextlib.suppress(Exception):
            self.engine.remove_dir(spec.id)

    def _reap_draining(self, cid: str) -> None:
        draining = self._draining.pop(cid, None)
        if draining is not None:
            draining.reap()

    def _isolate_binds(self, req: ContainerRequest) -> list[tuple[str, bool]]:
        """Host paths the test body needs: pytest's basetemp read-write (tmp_path and friends
        are shared with the parent's fixtures); the project read-only where the container
        would not show it (under its private /tmp, or any path for a non-host image)."""
        basetemp = str(self.config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
        wanted = [str(self.config.rootpath), str(self.config.invocation_params.dir), os.getcwd()]
        if req.image != "host":
            import sysconfig

            paths = sysconfig.get_paths()
            wanted += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
            wanted += [p for p in sys.path if p and os.path.isdir(p)]
            private: tuple[str, ...] = ("/",)
        else:
            private = ("/tmp", "/proc", "/sys", "/dev")
        ro = sorted({os.path.realpath(p) for p in wanted if os.path.isdir(p)})
        ro = [p for p in ro if any(_under(p, t) for t in private) and not _under(p, basetemp)]
        ro = [p for p in ro if not any(q != p and _under(p, q) for q in ro)]
        binds = [(p, True) for p in ro] + [(basetemp, False)]
        return sorted(binds, key=lambda b: len(b[0]))

    # -- end of session ------------------------------------------------------------------------
    def finish(self) -> None:
        with contextlib.suppress(Exception):
            self.start_ahead([])
        for container in list(self._owned.values()):
            with contextlib.suppress(Exception):
                self.remove(container)
        with contextlib.suppress(Exception):
            self.prepare_ahead([])
        for spec in self._isolate_pool.values():
            self._reap_draining(spec.id)
            with contextlib.suppress(Exception):
                self.engine.remove_dir(spec.id)
        for cid in list(self._draining):
            self._reap_draining(cid)
        for prepared in self._reaping:
            prepared.reap()
        self._reaping.clear()
        self._isolate_pool.clear()
        self._stop_reaper()
        from sandbox import _zygote

        _zygote.stop()
        if self._scratch is not None:
            import shutil

            shutil.rmtree(self._scratch, ignore_errors=True)


def _can_prepare() -> bool:
    """Whether an isolated test's container can be set up ahead (``prepare_callable``): its
    helper is forked by the session's zygote, or by this process where it has no threads."""
    from sandbox import _zygote
    from sandbox.runtime.process import can_fork

    return _zygote.current() is not None or can_fork()


def _snapshot(spec: Any) -> list[tuple[str, int, int, int]]:
    """Every entry of the writable layer and the bound /etc files, with mode, size and mtime."""
    out: list[tuple[str, int, int, int]] = []
    upper = spec.rootfs.upper

    def walk(path: str) -> None:
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                out.append((entry.path[len(upper):], st.st_mode, st.st_size, st.st_mtime_ns))
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path)

    try:
        walk(upper)
        st = os.stat(upper)
        out.append(("", st.st_mode, st.st_size, st.st_mtime_ns))
        for name in ("hosts", "hostname", "resolv.conf"):
            st = os.stat(os.path.join(spec.container_dir, name))
            out.append((name, st.st_mode, st.st_size, st.st_mtime_ns))
    except OSError:
        return [("unreadable", 0, 0, 0)]
    return sorted(out)


def _reaper_log() -> Any:
    path = os.environ.get("PYTEST_SANDBOX_REAPER_LOG")
    return open(path, "ab") if path else subprocess.DEVNULL  # noqa: SIM115 - Popen's stderr


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")
