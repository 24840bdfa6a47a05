"""The builder's pure parts: config rules, history text, cache keys, context resolution."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sandbox.build import BuildState, Matcher, parse_dockerfile
from sandbox.build._cache import BuildCache, cache_key
from sandbox.build._context import BuildContext, hash_source
from sandbox.build._image_state import ImageState, timestamp
from sandbox.build._steps import StageFlags, apply_metadata, run_created_by
from sandbox.build.builder import _instruction_key, _platform_args
from sandbox.cli._build_replay import (
    ReplayKey,
    ReplayRecord,
    context_signature,
    load_record,
    needs_tagging,
    save_record,
)
from sandbox.errors import BuildError
from sandbox.store import Store


def _apply(text: str, base: dict | None = None) -> tuple[ImageState, list[str]]:
    df = parse_dockerfile(text)
    stage = df.stages[-1]
    image = ImageState(config=dict(base or {}))
    state = BuildState.for_stage(df, stage, env=image.config.get("Env") or [])
    flags = StageFlags()
    history = []
    for raw in stage.instructions:
        step = state.step(raw)
        history.append(apply_metadata(image, step, state, flags))
    return image, history


def test_config_of_every_metadata_instruction() -> None:
    image, history = _apply(
        "FROM x\nENV A=1 B=\"two words\"\nLABEL l=v\nUSER app:app\nEXPOSE 80 53/udp 8000-8001\n"
        "VOLUME /data\nVOLUME [\"/logs\"]\nSTOPSIGNAL SIGKILL\nSHELL [\"/bin/bash\", \"-c\"]\n"
        "HEALTHCHECK --interval=1s --retries=2 CMD curl -f localhost\nONBUILD RUN make\n"
        "MAINTAINER me\nCMD echo $A\nENTRYPOINT [\"run\"]\n",
        {"Env": ["PATH=/bin"]})
    cfg = image.config
    assert cfg["Env"] == ["PATH=/bin", "A=1", "B=two words"]
    assert cfg["Labels"] == {"l": "v"}
    assert cfg["User"] == "app:app"
    assert cfg["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}}
    assert cfg["StopSignal"] == "SIGKILL"
    assert cfg["Shell"] == ["/bin/bash", "-c"]
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f localhost"],
                                  "Interval": 1_000_000_000, "Retries": 2}
    assert cfg["OnBuild"] == ["RUN make"]
    assert cfg["Cmd"] == ["/bin/bash", "-c", "echo $A"]  # CMD set in this stage: kept
    assert cfg["Entrypoint"] == ["run"]
    assert image.author == "me"
    assert history[0] == '/bin/sh -c #(nop)  ENV A=1 B=two words'
    assert history[-1] == '/bin/sh -c #(nop)  ENTRYPOINT ["run"]'


def test_entrypoint_clears_an_inherited_cmd_only() -> None:
    image, _ = _apply("FROM x\nENTRYPOINT [\"e\"]\n", {"Cmd": ["inherited"]})
    assert "Cmd" not in image.config
    image, _ = _apply("FROM x\nCMD [\"mine\"]\nENTRYPOINT [\"e\"]\n", {"Cmd": ["inherited"]})
    assert image.config["Cmd"] == ["mine"]


def test_bad_stopsignal_and_port() -> None:
    with pytest.raises(BuildError, match="STOPSIGNAL"):
        _apply("FROM x\nSTOPSIGNAL SIGNOPE\n")
    with pytest.raises(BuildError, match="invalid port"):
        _apply("FROM x\nEXPOSE 99999\n")


def test_run_history_names_build_args() -> None:
    assert run_created_by(("/bin/sh", "-c", "make"), {}) == "/bin/sh -c make"
    assert run_created_by(("/bin/sh", "-c", "make"), {"B": "2", "A": "1"}) == \
        "|2 A=1 B=2 /bin/sh -c make"


def test_state_id_and_image_blobs_are_stable() -> None:
    a = ImageState(config={"Env": ["A=1"]}, diff_ids=["sha256:" + "1" * 64],
                   layers=[{"mediaType": "m", "digest": "sha256:" + "2" * 64, "size": 3}])
    a.add_history("x", created=timestamp(0), empty_layer=False)
    b = ImageState.from_dict(a.to_dict())
    assert a.state_id() == b.state_id()
    assert a.image_blobs() == b.image_blobs()
    b.config["Env"].append("B=2")
    assert a.state_id() != b.state_id()
    assert timestamp(1700000000) == "2023-11-14T22:13:20Z"


def test_instruction_key_ignores_position_not_content() -> None:
    one = parse_dockerfile("FROM x\nRUN echo hi\n").stages[0].instructions[0]
    two = parse_dockerfile("FROM x\n\n\nRUN echo hi\n").stages[0].instructions[0]
    three = parse_dockerfile("FROM x\nRUN echo ho\n").stages[0].instructions[0]
    assert _instruction_key(one) == _instruction_key(two) != _instruction_key(three)
    assert cache_key("p", _instruction_key(one)) != cache_key("q", _instruction_key(one))


def test_platform_other_than_the_host_is_refused() -> None:
    assert _platform_args(None)["TARGETOS"] == "linux"
    with pytest.raises(BuildError, match="cannot build for"):
        _platform_args("linux/s390x")


def test_cache_round_trip_and_missing_blob_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "store").ensure()
    digest = store.put_blob(b"layer")
    state = ImageState(diff_ids=["sha256:" + "1" * 64],
                       layers=[{"mediaType": "m", "digest": digest, "size": 5}])
    cache = BuildCache(store)
    cache.put("k" * 64, state)
    hit = cache.get("k" * 64)
    assert hit is not None and hit.state_id() == state.state_id()
    assert BuildCache(store, disabled=True).get("k" * 64) is None
    os.unlink(store.blob_path(digest))
    assert cache.get("k" * 64) is None
    assert cache.referenced_blobs() == {digest}
    assert cache.prune() == 1 and cache.get("k" * 64) is None


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("a")
    (root / "src" / "b.log").write_text("b")
    (root / "src" / "sub" / "c.txt").write_text("c")
    (root / "src" / ".hidden").write_text("h")
    (root / "top.txt").write_text("t")
    (root / "escape").symlink_to("/etc")
    return root


def test_context_globs_and_directories(ctx: Path) -> None:
    context = BuildContext(str(ctx), Matcher([]))
    assert [s.name for s in context.resolve("src/*.txt")] == ["a.txt"]
    assert [s.name for s in context.resolve("*.txt")] == ["top.txt"]
    (src,) = context.resolve("src")
    assert src.is_dir and src.entries == (".hidden", "a.txt", "b.log", "sub", "sub/c.txt")
    assert context.resolve("/top.txt")[0].path == str(ctx / "top.txt")
    (ctx / "alias").symlink_to("top.txt")
    (alias,) = context.resolve("alias")
    assert (alias.name, alias.path) == ("alias", str(ctx / "top.txt"))  # followed, not renamed


def test_context_refuses_paths_outside(ctx: Path) -> None:
    context = BuildContext(str(ctx), Matcher([]))
    with pytest.raises(BuildError, match="outside the build context"):
        context.resolve("../x")
    with pytest.raises(BuildError, match="file not found"):
        context.resolve("escape/passwd")  # the symlink resolves inside the context


def test_context_applies_dockerignore(ctx: Path) -> None:
    context = BuildContext(str(ctx), Matcher(["src/*.log", "top.txt"]))
    assert context.resolve("src")[0].entries == (".hidden", "a.txt", "sub", "sub/c.txt")
    with pytest.raises(BuildError, match="excluded by .dockerignore"):
        context.resolve("top.txt")
    with pytest.raises(BuildError, match="no source files"):
        context.resolve("*.nothing")


def test_content_hash_ignores_times_not_content(ctx: Path) -> None:
    context = BuildContext(str(ctx), Matcher([]))

    def digest() -> str:
        h = hashlib.sha256()
        for s in context.resolve("src"):
            hash_source(h, s)
        return h.hexdigest()

    before = digest()
    os.utime(ctx / "src" / "a.txt", (1, 1))
    assert digest() == before
    (ctx / "src" / "a.txt").write_text("changed")
    assert digest() != before
    os.chmod(ctx / "src" / "sub" / "c.txt", 0o600)
    assert digest() != before


def test_replay_record_round_trip_and_signature(ctx: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store").ensure()
    key = ReplayKey("FROM x\n", "Dockerfile", str(ctx), {"A": "1"})
    assert ReplayKey("FROM x\n", "Dockerfile", str(ctx), {"A": "2"}).digest() != key.digest()
    sig = context_signature(str(ctx))
    record = ReplayRecord(sig, (("docker.io/library/x:latest", "sha256:" + "a" * 64),),
                          "sha256:" + "b" * 64, "sha256:" + "c" * 64, ("Step 1/1 : FROM x",))
    save_record(store, key, record)
    assert load_record(store, key) == record
    (ctx / "src" / "a.txt").write_text("changed size")
    assert context_signature(str(ctx)) != sig
    entries = [{"digest": "sha256:" + "b" * 64,
                "annotations": {"org.opencontainers.image.ref.name": "app:latest"}}]
    assert not needs_tagging(entries, "sha256:" + "b" * 64, ["app:latest"])
    assert needs_tagging(entries, "sha256:" + "b" * 64, ["other:latest"])
    assert not needs_tagging(entries, "sha256:" + "b" * 64, [])
