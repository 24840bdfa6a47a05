"""The ``pytest11`` entry point ``sandbox``: options, ini keys, the marker, hooks and fixtures.

``-p no:sandbox`` turns it off. See ``examples/README-plugin-section.md`` for the user's view.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from pytest_plugin import isolate
from pytest_plugin.factory import FACTORY_KEY, SandboxFactory
from pytest_plugin.fixtures import (  # noqa: F401 - fixtures are found by name in this module
    CONTAINER_KEY,
    FRESH_KEY,
    container,
    container_factory,
    module_container_factory,
    rendered,
    sandbox,
)
from pytest_plugin.marker import (
    KEEP_CHOICES,
    LAYER_CHOICES,
    MARKER_DOC,
    ContainerRequest,
    MarkerError,
    images_of,
    parse_marker,
    request_for,
    settings_from_config,
)

__all__ = ["item_request", "REPORTS_KEY", "REQUEST_KEY"]

REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
REQUEST_KEY = pytest.StashKey[ContainerRequest]()
ISOLATED_KEY = pytest.StashKey[Any]()
IMAGE_PARAM = "sandbox_image"


# -- options, hooks, configuration ------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sandbox", "rootless containers (rootless-sandbox)")
    group.addoption("--sandbox-image", dest="sandbox_image", default=None, metavar="IMAGE",
                    help="default image of @pytest.mark.container and the container fixture "
                         "(ini: sandbox_image; default: the built-in 'host')")
    group.addoption("--sandbox-root", dest="sandbox_root", default=None, metavar="DIR",
                    help="the sandbox store (ini: sandbox_root; default: $SANDBOX_ROOT, else "
                         "$XDG_DATA_HOME/sandbox)")
    group.addoption("--sandbox-keep", dest="sandbox_keep", default=None, choices=KEEP_CHOICES,
                    help="keep test containers: none (default), failed or all "
                         "(ini: sandbox_keep)")
    group.addoption("--sandbox-storage-driver", dest="sandbox_storage_driver", default=None,
                    choices=("overlay", "fuse", "copy"),
                    help="storage driver for image containers (ini: sandbox_storage_driver; "
                         "default: probed)")
    group.addoption("--sandbox-layer", dest="sandbox_layer", default=None,
                    choices=LAYER_CHOICES,
                    help="where the writable layer of a test's container lives: memory (a tmpfs "
                         "of the container's, the default, for containers not kept) or disk "
                         "(ini: sandbox_layer)")
    group.addoption("--sandbox-network", dest="sandbox_network", default=None,
                    help="network mode of test containers: none (loopback only, default), "
                         "host, slirp4netns[:OPTIONS] or pasta[:OPTIONS] (ini: sandbox_network)")
    parser.addini("sandbox_image", "default image of the container marker and fixture",
                  default="")
    parser.addini("sandbox_root", "the sandbox store directory", default="")
    parser.addini("sandbox_keep", "keep test containers: none, failed or all", default="")
    parser.addini("sandbox_storage_driver", "overlay, fuse or copy", default="")
    parser.addini("sandbox_layer", "writable layer of test containers: memory or disk",
                  default="")
    parser.addini("sandbox_network", "none, host, slirp4netns or pasta (with options)",
                  default="")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_plugin import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    config.stash[FACTORY_KEY] = SandboxFactory(config, settings_from_config(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    factory = config.stash.get(FACTORY_KEY, None)
    if factory is not None:
        factory.finish()


def pytest_report_header(config: pytest.Config) -> str | None:
    factory = config.stash.get(FACTORY_KEY, None)
    if factory is None or config.option.verbose < 1:
        return None
    s = factory.settings
    return (f"sandbox: image={s.image or 'host'} keep={s.keep} network={s.network} "
            f"root={s.root or os.environ.get('SANDBOX_ROOT') or '(default)'}")


# -- the marker -------------------------------------------------------------------------------

def _image_id(image: str) -> str:
    return image.replace("/", "_")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    mark = metafunc.definition.get_closest_marker("container")
    if mark is None:
        return
    try:
        args = parse_marker(mark, metafunc.definition.nodeid)
    except MarkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    images = images_of(args)
    if images:
        if IMAGE_PARAM not in metafunc.fixturenames:
            metafunc.fixturenames.append(IMAGE_PARAM)
        metafunc.parametrize(IMAGE_PARAM, images, ids=[_image_id(i) for i in images])


def item_request(item: pytest.Item) -> ContainerRequest:
    """The test's container request: marker > command line > ini > default, then the
    ``pytest_sandbox_container_spec`` hook."""
    cached = item.stash.get(REQUEST_KEY, None)
    if cached is not None:
        return cached
    factory = item.config.stash[FACTORY_KEY]
    mark = item.get_closest_marker("container")
    try:
        args = parse_marker(mark, item.nodeid) if mark is not None else {}
    except MarkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    callspec = getattr(item, "callspec", None)
    image = callspec.params.get(IMAGE_PARAM) if callspec is not None else None
    req = request_for(args, factory.settings, factory.default_image(), image)
    hooked = item.ihook.pytest_sandbox_container_spec(item=item, spec=req)
    if hooked is not None:
        if not isinstance(hooked, ContainerRequest):
            raise TypeError(f"pytest_sandbox_container_spec must return a ContainerRequest or "
                            f"None, not {type(hooked).__name__}")
        req = hooked
    item.stash[REQUEST_KEY] = req
    return req


# -- isolate=True -----------------------------------------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.stash.get(isolate.IN_CHILD, False):
        return None
    if pyfuncitem.get_closest_marker("container") is None:
        return None
    req = item_request(pyfuncitem)
    if not req.isolate:
        return None
    factory = pyfuncitem.config.stash[FACTORY_KEY]
    with rendered(f"isolate in {req.image}"):
        spec, prepared = factory.take_prepared(pyfuncitem, req)
        pyfuncitem.stash[ISOLATED_KEY] = spec
        factory.prepare_ahead(factory.upcoming(factory.next_item))  # set up while it runs
        try:
            isolate.run_isolated(pyfuncitem, req, spec, factory.engine.mapping, prepared)
        except (KeyboardInterrupt, SystemExit):
            _finish_isolated(pyfuncitem, None)  # no report will come: remove it now
            raise
    return True


def _finish_isolated(item: pytest.Item, report: pytest.TestReport | None) -> None:
    """Diff sections on failure; keep the container's files per --sandbox-keep, else remove."""
    spec = item.stash.get(ISOLATED_KEY, None)
    if spec is None:
        return
    del item.stash[ISOLATED_KEY]
    factory = item.config.stash[FACTORY_KEY]
    req = item_request(item)
    failed = report is not None and report.failed
    if report is not None and failed:
        upper = factory.writable_layer(spec)
        if upper is None:
            text = "(not available: the writable layer was in memory and is gone)"
        else:
            changes = isolate.upper_diff(spec, upper)
            text = "\n".join(f"{kind} {path}" for kind, path in changes[:500]) or "(no changes)"
        report.sections.append(("sandbox diff of the isolated test body", text))
    keep = req.keep == "all" or (req.keep == "failed" and failed)
    if keep and report is not None:
        report.sections.append(("sandbox container kept", (
            f"the isolated test's writable layer is kept in {spec.rootfs.upper}\n"
            f"  remove it: sandbox --root {factory.engine.store.root} rm -f {spec.id[:12]}")))
    factory.release_isolated(spec, keep=keep)


# -- reports, diagnostics, retention ----------------------------------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    """Remember the next test: the ``container`` fixture starts its container ahead."""
    factory = item.config.stash[FACTORY_KEY]
    factory.next_item = nextitem
    try:
        return (yield)
    finally:
        factory.next_item = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[FACTORY_KEY].current_item = item


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        factory = item.config.stash[FACTORY_KEY]
        for c in item.stash.get(FRESH_KEY, []):
            factory.remove(c)
        _finish_isolated(item, None)
        factory.current_item = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if item.stash.get(isolate.IN_CHILD, False):
        return report
    if call.when == "call":
        isolate.apply_child_report(item, call, report)
        _finish_isolated(item, report)
    item.stash.setdefault(REPORTS_KEY, {})[call.when] = report
    c = item.stash.get(CONTAINER_KEY, None)
    if c is not None and report.failed and call.when == "call":
        _add_diagnostics(item, c, report)
    return report


def _meaningful(changes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop ``C`` entries of directories that only hold other listed changes, or nothing
    (the host image's skeleton): what is left is what the test did."""
    paths = [p for _, p in changes]
    out = []
    for kind, path in changes:
        prefix = path.rstrip("/") + "/"
        if kind == "C" and (path.count("/") == 1 or any(p.startswith(prefix) for p in paths)):
            continue
        out.append((kind, path))
    return out


def _add_diagnostics(item: pytest.Item, c: Any, report: pytest.TestReport) -> None:
    """Failure sections: the container's log and its diff; how to enter it when kept."""
    try:
        log = c.logs(tail=200)
    except Exception as exc:  # noqa: BLE001 - diagnostics must never hide the failure
        log = f"(log unavailable: {exc})"
    if log.strip():
        report.sections.append((f"sandbox log of {c.name}", log))
    try:
        changes = _meaningful(c.diff())
        text = "\n".join(f"{kind} {path}" for kind, path in changes[:500])
        if len(changes) > 500:
            text += f"\n... {len(changes) - 500} more"
    except Exception as exc:  # noqa: BLE001
        text = f"(diff unavailable: {exc})"
    report.sections.append((f"sandbox diff of {c.name}", text or "(no changes)"))
    if c.request.keep in ("failed", "all"):
        root = c._factory.engine.store.root
        report.sections.append((
            f"sandbox container {c.name} kept",
            f"container {c.id[:12]} ({c.name}) is kept for you:\n"
            f"  enter it:  sandbox --root {root} exec -it {c.id[:12]} sh\n"
            f"  remove it: sandbox --root {root} rm -f {c.id[:12]}"))
