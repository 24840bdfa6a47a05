"""``sandbox.build.builder.build`` called in-process (as the pytest plugin would)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.build.builder import BuildOptions, RunStepFailed, build
from sandbox.containers import Engine
from sandbox.store import Store

pytestmark = pytest.mark.requires_userns

DOCKERFILE = """FROM busybox AS one
RUN echo {marker} > /marker
FROM busybox
COPY --from=one /marker /copied
COPY f.txt /f.txt
WORKDIR /made/here
CMD ["cat", "/copied"]
"""


@pytest.fixture(params=["fork", "spawn"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """``spawn``: a live thread makes every namespace entry go through a fresh helper."""
    if request.param == "fork":
        yield "fork"
        return
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        yield "spawn"
    finally:
        stop.set()
        thread.join()


def test_build_in_process(mode: str, busybox_image: str, session_store: Path,
                          tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("f\n")
    lines: list[str] = []
    engine = Engine(Store(session_store))
    options = BuildOptions(context=str(ctx), dockerfile_text=DOCKERFILE.format(marker=mode),
                           tags=(f"api-{mode}",))
    result = build(engine, options, lines.append)
    assert result.names == (f"docker.io/library/api-{mode}:latest",)
    assert lines[0] == "Step 1/7 : FROM busybox AS one"
    assert lines[-1] == f"Successfully tagged api-{mode}"
    image = engine.images.get(f"api-{mode}")
    assert image.id == result.image_id
    assert image.config["config"]["WorkingDir"] == "/made/here"
    assert len(image.diff_ids) == 4  # busybox, two COPYs, WORKDIR
    again = build(engine, options, None)
    assert (again.image_id, again.cached) == (result.image_id, 5)


def test_failing_run_raises(busybox_image: str, session_store: Path) -> None:
    engine = Engine(Store(session_store))
    with pytest.raises(RunStepFailed) as info:
        build(engine, BuildOptions(context=None, dockerfile_text="FROM busybox\nRUN exit 7\n",
                                   quiet=True))
    assert info.value.code == 7 and info.value.exit_code == 1
