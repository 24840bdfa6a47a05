"""The plugin's own hookspecs, added in ``pytest_addhooks`` (as pytest-xdist does).

Implement them in a ``conftest.py`` or a plugin::

    def pytest_sandbox_container_spec(item, spec):
        return dataclasses.replace(spec, env=spec.env + ("CI=1",))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_plugin.marker import ContainerRequest


@pytest.hookspec(firstresult=True)
def pytest_sandbox_default_image(config: pytest.Config) -> str | None:
    """The image used when neither the marker, ``--sandbox-image`` nor the ``sandbox_image``
    ini key names one.

    Return an image reference (``"host"``, ``"busybox:latest"``...) or ``None`` to let the next
    implementation (ultimately the built-in ``host``) decide. Stops at the first non-None result.
    """


@pytest.hookspec(firstresult=True)
def pytest_sandbox_container_spec(item: pytest.Item,
                                  spec: ContainerRequest) -> ContainerRequest | None:
    """Adjust the container a test gets, before it is created.

    ``spec`` is the frozen :class:`pytest_plugin.marker.ContainerRequest` built from the marker,
    the command line and the ini file. Return a changed copy
    (``dataclasses.replace(spec, env=...)``) or ``None`` to keep it. Stops at the first
    non-None result. Called for the ``container`` fixture and for ``isolate=True`` tests.
    """


@pytest.hookspec()
def pytest_sandbox_container_finished(item: pytest.Item, container: Any,
                                      report: pytest.TestReport | None) -> None:
    """A test's ``container`` fixture container is about to be removed (or kept, per
    ``--sandbox-keep``). Not called for ``isolate=True`` bodies (their container is gone when
    the report is made; the report has the diff).

    ``container`` is the test's :class:`pytest_plugin.fixtures.handle.Container` (still usable:
    ``container.run``, ``container.diff()``...), ``report`` the test's call-phase report (``None``
    when the test did not reach its call phase).
    """
