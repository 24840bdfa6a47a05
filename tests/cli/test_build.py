"""``sandbox build`` and ``sandbox builder prune`` as a user runs them."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from buildtest_helpers import make_context as _context
from buildtest_helpers import run_build as _build
from buildtest_helpers import store_image as _image

from sandbox.runtime.idmap import detect_mapping

pytestmark = pytest.mark.requires_userns


def _has_image(store: Path, name: str) -> bool:
    from sandbox.errors import ImageNotFound

    try:
        _image(store, name)
    except ImageNotFound:
        return False
    return True


def _layer_members(store: Path, digest: str) -> dict[str, tarfile.TarInfo]:
    blob = store / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as tar:
        return {m.name: m for m in tar}


# -- output and the CLI -------------------------------------------------------------------------

def test_progress_is_docker_classic(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN echo from-the-step\nCMD [\"true\"]\n")
    proc = _build(cli, "-t", "progress:1", str(ctx))
    lines = proc.stdout.splitlines()
    assert lines[0] == "Step 1/3 : FROM busybox"
    assert "Step 2/3 : RUN echo from-the-step" in lines
    assert "from-the-step" in lines
    running = next(i for i, line in enumerate(lines) if line.startswith(" ---> Running in "))
    assert lines[running + 2].startswith("Removing intermediate container ")
    assert any(line.startswith(" ---> ") for line in lines)
    assert lines[-2].startswith("Successfully built ")
    assert lines[-1] == "Successfully tagged progress:1"


def test_quiet_prints_only_the_image_id(cli, busybox_image: str, tmp_path: Path,
                                        session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN echo noisy\n")
    proc = _build(cli, "-q", "-t", "quiet", str(ctx))
    assert proc.stdout.strip() == _image(session_store, "quiet").id
    assert "noisy" not in proc.stdout + proc.stderr


def test_several_tags_labels_and_file_flag(cli, busybox_image: str, tmp_path: Path,
                                           session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\n")
    (ctx / "other.Dockerfile").write_text("FROM busybox\nLABEL from=file\n")
    _build(cli, "-t", "multi-a", "-t", "multi-b:2", "--label", "x=y", "-f",
           str(ctx / "other.Dockerfile"), str(ctx))
    a, b = _image(session_store, "multi-a"), _image(session_store, "multi-b:2")
    assert a.id == b.id
    assert a.config["config"]["Labels"] == {"from": "file", "x": "y"}


def test_dockerfile_on_stdin_without_context(cli, busybox_image: str,
                                             session_store: Path) -> None:
    proc = _build(cli, "-t", "stdin-df", "-", input="FROM busybox\nENV FROM_STDIN=1\n")
    assert "Successfully tagged stdin-df" in proc.stdout
    assert "FROM_STDIN=1" in _image(session_store, "stdin-df").config["config"]["Env"]


def test_tar_context_on_stdin(cli, busybox_image: str, tmp_path: Path,
                              session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY data.txt /data.txt\nCMD [\"cat\", "
                   "\"/data.txt\"]\n", {"data.txt": "in the tar\n"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(ctx / "Dockerfile", arcname="Dockerfile")
        tar.add(ctx / "data.txt", arcname="data.txt")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sandbox", "build", "-t", "tarctx", "-"],
                          input=buf.getvalue(), capture_output=True, env=cli.env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert cli("run", "--rm", "tarctx").stdout == "in the tar\n"


# -- the image ------------------------------------------------------------------------------

def test_image_runs_and_history_marks_empty_layers(cli, busybox_image: str, tmp_path: Path,
                                                   session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nENV A=1\nRUN echo layer > /f\nRUN true\n"
                   "CMD [\"cat\", \"/f\"]\n")
    _build(cli, "-t", "hist", str(ctx))
    image = _image(session_store, "hist")
    history = image.config["history"][-4:]
    assert [h["created_by"] for h in history] == [
        "/bin/sh -c #(nop)  ENV A=1", "/bin/sh -c echo layer > /f", "/bin/sh -c true",
        '/bin/sh -c #(nop)  CMD ["cat" "/f"]']
    assert [bool(h.get("empty_layer")) for h in history] == [True, False, True, True]
    assert cli("run", "--rm", "hist").stdout == "layer\n"
    assert "echo layer" in cli("history", "--no-trunc", "hist").stdout


def test_run_step_layer_has_no_runtime_mount_points(cli, busybox_image: str, tmp_path: Path,
                                                    session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN echo x > /x\n")
    _build(cli, "-t", "nomounts", str(ctx))
    members = _layer_members(session_store, _image(session_store, "nomounts").layers[-1]["digest"])
    assert set(members) == {"x"}


def test_entrypoint_resets_inherited_cmd(cli, busybox_image: str, tmp_path: Path,
                                         session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCMD [\"a\"]\nFROM 0\n" if False else
                   "FROM busybox AS one\nCMD [\"inherited\"]\nFROM one\n"
                   "ENTRYPOINT [\"echo\"]\n")
    _build(cli, "-t", "entry", str(ctx))
    cfg = _image(session_store, "entry").config["config"]
    assert cfg["Entrypoint"] == ["echo"]
    assert "Cmd" not in cfg


def test_reproducible_with_source_date_epoch(cli, busybox_image: str, tmp_path: Path,
                                             session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY a.txt /\nRUN echo fixed > /b.txt\n",
                   {"a.txt": "a\n"})
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = _build(cli, "-q", "--no-cache", str(ctx), env=env).stdout.strip()
    second = _build(cli, "-q", "--no-cache", str(ctx), env=env).stdout.strip()
    assert first == second
    image = _image(session_store, first)
    assert image.config["created"] == "2023-11-14T22:13:20Z"
    for layer in image.layers[1:]:
        for member in _layer_members(session_store, layer["digest"]).values():
            assert member.mtime <= 1700000000


# -- the cache ------------------------------------------------------------------------------

TEN_STEPS = """FROM busybox
ENV TEST={marker}
RUN echo one > /one
COPY a.txt /a.txt
RUN cat /a.txt > /copy
WORKDIR /app
COPY b.txt .
RUN echo three > three
LABEL k=v
CMD ["cat", "/copy"]
"""


def test_cache_hits_and_misses_like_docker(cli, busybox_image: str, tmp_path: Path,
                                           session_store: Path) -> None:
    ctx = _context(tmp_path, TEN_STEPS.format(marker="hits"), {"a.txt": "a\n", "b.txt": "b\n"})
    first = _build(cli, "-t", "cached", str(ctx)).stdout
    assert "Using cache" not in first
    again = _build(cli, "-t", "cached", str(ctx)).stdout
    assert again.count(" ---> Using cache") == 9
    assert again.splitlines()[-2] == first.splitlines()[-2]  # the same image id
    os.utime(ctx / "b.txt", (1, 1))  # times are not content
    assert _build(cli, str(ctx)).stdout.count("Using cache") == 9
    (ctx / "b.txt").write_text("changed\n")
    changed = _build(cli, "-t", "cached", str(ctx)).stdout
    assert changed.count(" ---> Using cache") == 5  # ENV RUN COPY RUN WORKDIR
    assert "Step 8/10 : RUN echo three > three\n ---> Using cache" not in changed
    no_cache = _build(cli, "--no-cache", str(ctx)).stdout
    assert "Using cache" not in no_cache


def test_cache_key_includes_build_args(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nARG V=1\nRUN echo $V > /v\n")
    _build(cli, str(ctx))
    assert _build(cli, str(ctx)).stdout.count("Using cache") == 2
    out = _build(cli, "--build-arg", "V=2", str(ctx)).stdout
    assert "Step 3/3 : RUN echo $V > /v\n ---> Using cache" not in out


def test_builder_prune_empties_the_cache(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN echo prune-me > /p\n")
    _build(cli, str(ctx))
    assert "Using cache" in _build(cli, str(ctx)).stdout
    proc = cli("builder", "prune", "-f")
    assert proc.returncode == 0, proc.stderr
    assert "Deleted build cache objects" in proc.stdout
    assert "Using cache" not in _build(cli, str(ctx)).stdout


# -- COPY / ADD -----------------------------------------------------------------------------

def test_chown_and_chmod_are_in_the_layer(cli, busybox_image: str, tmp_path: Path,
                                          session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY --chown=app:2000 --chmod=640 f.txt /f.txt\n",
                   {"f.txt": "f\n"})
    _build(cli, "-t", "chown", str(ctx))
    members = _layer_members(session_store, _image(session_store, "chown").layers[-1]["digest"])
    assert (members["f.txt"].uid, members["f.txt"].gid) == (1000, 2000)
    assert members["f.txt"].mode == 0o640


def test_chown_unknown_user_is_refused(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY --chown=nosuchuser f.txt /\n",
                   {"f.txt": "f\n"})
    proc = _build(cli, str(ctx), ok=False)
    assert proc.returncode == 125
    assert "Dockerfile:2:" in proc.stderr and "nosuchuser" in proc.stderr


@pytest.mark.skipif(detect_mapping().mode != "subuid", reason="needs subuid ranges to chown")
def test_chowned_file_is_owned_in_the_container(cli, busybox_image: str,
                                                tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY --chown=1000:1000 f.txt /f.txt\n"
                   "RUN stat -c %u:%g /f.txt > /owner\n", {"f.txt": "f\n"})
    _build(cli, "-t", "owned", str(ctx))
    assert cli("run", "--rm", "owned", "cat", "/owner").stdout == "1000:1000\n"


def test_add_extracts_local_tar(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nADD bundle.tar.gz /opt/\nCOPY bundle.tar.gz /raw/\n"
                   "CMD [\"sh\", \"-c\", \"cat /opt/pkg/inner.txt; ls /raw\"]\n")
    inner = tmp_path / "inner.txt"
    inner.write_text("inside\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tar:
        tar.add(inner, arcname="pkg/inner.txt")
    _build(cli, "-t", "addtar", str(ctx))
    assert cli("run", "--rm", "addtar").stdout == "inside\nbundle.tar.gz\n"


def test_add_url_with_checksum(cli, busybox_image: str, tmp_path: Path,
                               http_dir: tuple[str, Path]) -> None:
    url, root = http_dir
    (root / "remote.txt").write_text("remote\n")
    digest = "sha256:" + hashlib.sha256(b"remote\n").hexdigest()
    ctx = _context(tmp_path, f"FROM busybox\nADD --checksum={digest} {url}/remote.txt /d/\n"
                   "CMD [\"sh\", \"-c\", \"cat /d/remote.txt; stat -c %a /d/remote.txt\"]\n")
    _build(cli, "-t", "addurl", str(ctx))
    assert cli("run", "--rm", "addurl").stdout == "remote\n600\n"
    bad = _context(tmp_path, f"FROM busybox\nADD --checksum=sha256:{'0' * 64} "
                   f"{url}/remote.txt /d/\n")
    proc = _build(cli, str(bad), ok=False)
    assert proc.returncode == 125 and "checksum" in proc.stderr


def test_copy_into_symlinked_directory_follows_it(cli, busybox_image: str,
                                                  tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN mkdir /real && ln -s /real /link\n"
                   "COPY f.txt /link/\nCMD [\"sh\", \"-c\", \"cat /real/f.txt; readlink /link\"]\n",
                   {"f.txt": "through\n"})
    _build(cli, "-t", "symdest", str(ctx))
    assert cli("run", "--rm", "symdest").stdout == "through\n/real\n"


def test_run_mount_cache_persists(cli, busybox_image: str, tmp_path: Path) -> None:
    df = "FROM busybox\nARG N\nRUN --mount=type=cache,target=/cache echo $N >> /cache/log && " \
         "cat /cache/log > /seen\nCMD [\"cat\", \"/seen\"]\n"
    ctx = _context(tmp_path, df)
    _build(cli, "--build-arg", "N=1", "-t", "cachemount", str(ctx))
    _build(cli, "--build-arg", "N=2", "-t", "cachemount", str(ctx))
    out = cli("run", "--rm", "cachemount").stdout
    assert out.endswith("1\n2\n")


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize(("dockerfile", "files", "message"), [
    ("FROM busybox\nFROB x\n", {}, "Dockerfile:2: unknown instruction: FROB"),
    ("FROM busybox\nRUN echo \\\n", {}, "Dockerfile:2:"),
    ("FROM busybox\nCOPY missing.txt /\n", {}, "Dockerfile:2: COPY failed: file not found"),
    ("FROM busybox\nCOPY ../outside /\n", {}, "forbidden path outside the build context"),
    ("FROM busybox\nCOPY a.txt b.txt /dest\n", {"a.txt": "", "b.txt": ""},
     "destination must be a directory and end with a /"),
    # (a closed loopback port: the pull a missing base gets fails without leaving the host)
    ("FROM 127.0.0.1:9/nosuchimage:1\n", {}, "unable to find image"),
    ("FROM busybox\nEXPOSE nonsense\n", {}, "invalid port"),
])
def test_bad_input_is_one_line_with_the_line_number(cli, busybox_image: str, tmp_path: Path,
                                                    dockerfile: str, files: dict[str, str],
                                                    message: str) -> None:
    proc = _build(cli, "-t", "bad", str(_context(tmp_path, dockerfile, files)), ok=False)
    assert proc.returncode == 125
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_failing_run_exits_1_and_writes_no_image(cli, busybox_image: str, tmp_path: Path,
                                                 session_store: Path) -> None:
    before = set(os.listdir(session_store / "containers"))
    ctx = _context(tmp_path, "FROM busybox\nRUN echo partial > /p\nRUN false\n")
    proc = _build(cli, "-t", "failing", str(ctx), ok=False)
    assert proc.returncode == 1
    assert "The command '/bin/sh -c false' returned a non-zero code: 1" in proc.stderr
    assert "Step 3/3 : RUN false" in proc.stdout
    assert not _has_image(session_store, "failing")
    assert set(os.listdir(session_store / "containers")) == before
    code = _build(cli, str(_context(tmp_path, "FROM busybox\nRUN exit 3\n")), ok=False)
    assert code.returncode == 1 and "returned a non-zero code: 3" in code.stderr


def test_unknown_target(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox AS one\nFROM busybox AS two\n")
    proc = _build(cli, "--target", "three", str(ctx), ok=False)
    assert proc.returncode == 125
    assert "target stage 'three' could not be found" in proc.stderr


def test_target_builds_only_what_it_needs(cli, busybox_image: str, tmp_path: Path,
                                          session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox AS one\nRUN echo one > /one\n"
                   "FROM busybox AS two\nRUN echo two > /two\nFROM one\nRUN echo three\n")
    proc = _build(cli, "--target", "one", "-t", "target-one", str(ctx))
    assert "echo two" not in proc.stdout and "echo three" not in proc.stdout
    assert cli("run", "--rm", "target-one", "cat", "/one").stdout == "one\n"


def test_missing_context_and_bad_flags(cli, tmp_path: Path) -> None:
    proc = cli("build", str(tmp_path / "nope"))
    assert proc.returncode == 125 and "not found" in proc.stderr
    proc = cli("build", "--network", "bridge", str(tmp_path))
    assert proc.returncode == 125 and "network" in proc.stderr
    proc = cli("build", str(tmp_path))
    assert proc.returncode == 125 and "Dockerfile" in proc.stderr


# -- the no-change rebuild record, networks, triggers from images ---------------------------

def test_replayed_rebuild_prints_the_cached_build_and_retags(cli, busybox_image: str,
                                                             tmp_path: Path,
                                                             session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY f /f\nRUN cat /f > /g\n", {"f": "1\n"})
    first = _build(cli, "-t", "replay:1", str(ctx)).stdout
    again = _build(cli, "-t", "replay:1", str(ctx)).stdout
    assert again.count(" ---> Using cache") == 2
    assert again.splitlines()[-2:] == first.splitlines()[-2:]
    assert cli("rmi", "replay:1").returncode == 0
    _build(cli, "-t", "replay:1", "-t", "replay:2", str(ctx))
    assert _image(session_store, "replay:1").id == _image(session_store, "replay:2").id
    (ctx / "f").write_text("2\n")
    changed = _build(cli, "-t", "replay:1", str(ctx)).stdout
    assert changed.count("Using cache") == 0
    assert cli("run", "--rm", "replay:1", "cat", "/g").stdout == "2\n"


def test_retagged_base_is_not_replayed(cli, busybox_image: str, tmp_path: Path,
                                       session_store: Path) -> None:
    base = _context(tmp_path / "base", "FROM busybox\nENV BASE=1\n")
    _build(cli, "-t", "movingbase", str(base))
    ctx = _context(tmp_path / "app", "FROM movingbase\nRUN echo $BASE > /base\n")
    _build(cli, "-t", "onmoving", str(ctx))
    _build(cli, "-t", "movingbase", str(_context(tmp_path / "base2",
                                                 "FROM busybox\nENV BASE=2\n")))
    out = _build(cli, "-t", "onmoving", str(ctx)).stdout
    assert "Using cache" not in out
    assert cli("run", "--rm", "onmoving", "cat", "/base").stdout == "2\n"


def test_onbuild_triggers_of_a_base_image(cli, busybox_image: str, tmp_path: Path,
                                          session_store: Path) -> None:
    base = _context(tmp_path / "base", "FROM busybox\nONBUILD COPY marker /marker\n"
                    "ONBUILD RUN cat /marker > /seen\n")
    _build(cli, "-t", "triggers", str(base))
    assert _image(session_store, "triggers").config["config"]["OnBuild"] == [
        "COPY marker /marker", "RUN cat /marker > /seen"]
    child = _context(tmp_path / "child", "FROM triggers\nCMD [\"cat\", \"/seen\"]\n",
                     {"marker": "triggered\n"})
    out = _build(cli, "-t", "triggered", str(child)).stdout
    assert "# Executing 2 build triggers" in out
    assert cli("run", "--rm", "triggered").stdout == "triggered\n"
    assert "OnBuild" not in _image(session_store, "triggered").config["config"]


def test_run_network_none_by_default_host_on_request(cli, busybox_image: str,
                                                     tmp_path: Path) -> None:
    df = "FROM busybox\nARG WHICH\nRUN ls /sys/class/net > /nets\nCMD [\"cat\", \"/nets\"]\n"
    ctx = _context(tmp_path, df)
    _build(cli, "--build-arg", "WHICH=none", "-t", "net-none", str(ctx))
    assert cli("run", "--rm", "net-none").stdout == "lo\n"
    _build(cli, "--network", "host", "--build-arg", "WHICH=host", "-t", "net-host", str(ctx))
    host_nets = sorted(os.listdir("/sys/class/net"))
    assert cli("run", "--rm", "net-host").stdout.split() == host_nets


def test_failed_build_leaves_no_temp_files(cli, busybox_image: str, tmp_path: Path,
                                           session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPY f /f\nRUN exit 4\n", {"f": "x"})
    _build(cli, str(ctx), ok=False)
    leftovers = [n for n in os.listdir(session_store / "tmp")
                 if n.endswith((".build", ".copy", ".blob", ".context"))]
    assert leftovers == []


@pytest.mark.requires_fuse
def test_build_with_the_fuse_storage_driver(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox AS one\nRUN echo one > /one\nFROM busybox\n"
                   "WORKDIR /w\nCOPY --from=one /one ./\nCOPY f.txt ./\n"
                   "RUN cat one f.txt > both && rm /etc/os-release\n"
                   "CMD [\"sh\", \"-c\", \"cat both; test -e /etc/os-release || echo gone\"]\n",
                   {"f.txt": "f\n"})
    env = {"SANDBOX_STORAGE_DRIVER": "fuse"}
    _build(cli, "--no-cache", "-t", "fusebuild", str(ctx), env=env)
    assert cli("run", "--rm", "fusebuild", env=env).stdout == "one\nf\ngone\n"


def test_copy_exclude_and_unsupported_parents(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox AS s\nRUN mkdir /o && touch /o/a.txt /o/b.log\n"
                   "FROM busybox\nCOPY --exclude=*.log --exclude=sub/skip src/ /dst/\n"
                   "COPY --from=s --exclude=*.log /o /fromstage/\n"
                   "CMD [\"find\", \"/dst\", \"/fromstage\"]\n",
                   {"src/a.txt": "", "src/b.log": "", "src/sub/skip": "", "src/sub/keep": ""})
    _build(cli, "-t", "exclude", str(ctx))
    assert sorted(cli("run", "--rm", "exclude").stdout.split()) == [
        "/dst", "/dst/a.txt", "/dst/sub", "/dst/sub/keep", "/fromstage", "/fromstage/a.txt"]
    bad = _context(tmp_path / "bad", "FROM busybox\nCOPY --parents src/a.txt /dst/\n",
                   {"src/a.txt": ""})
    proc = _build(cli, str(bad), ok=False)
    assert proc.returncode == 125 and "--parents is not supported" in proc.stderr
