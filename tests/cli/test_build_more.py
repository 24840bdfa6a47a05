"""``sandbox build``: ADD of remote archives, proxy args, CLI paths, base image pulls,
network escalation, tag validation, -q failures and interrupted builds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from buildtest_helpers import make_context as _context
from buildtest_helpers import run_build as _build
from buildtest_helpers import store_image as _image

pytestmark = pytest.mark.requires_userns


def _targz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


# -- ADD of a remote archive --------------------------------------------------------------------

def test_add_url_archive_is_stored_as_is_unless_unpack(cli, busybox_image: str, tmp_path: Path,
                                                       http_dir: tuple[str, Path]) -> None:
    url, root = http_dir
    _targz(root / "bundle.tar.gz", {"pkg/inner.txt": b"inside\n"})
    _targz(tmp_path / "local.tar.gz", {"loc/l.txt": b"local\n"})
    ctx = _context(tmp_path, f"FROM busybox\nADD {url}/bundle.tar.gz /plain/\n"
                   f"ADD --unpack=true {url}/bundle.tar.gz /unpacked/\n"
                   "ADD local.tar.gz /local/\n"
                   "ADD --unpack=false local.tar.gz /local-kept/\n"
                   "CMD [\"sh\", \"-c\", \"ls /plain /local-kept; cat /unpacked/pkg/inner.txt "
                   "/local/loc/l.txt; gzip -dc /plain/bundle.tar.gz | tar -t\"]\n")
    (ctx / "local.tar.gz").write_bytes((tmp_path / "local.tar.gz").read_bytes())
    _build(cli, "-t", "addurl-archive", str(ctx))
    out = cli("run", "--rm", "addurl-archive").stdout
    assert out == "/local-kept:\nlocal.tar.gz\n\n/plain:\nbundle.tar.gz\ninside\nlocal\n" \
                  "pkg/inner.txt\n"


# -- predefined proxy args ----------------------------------------------------------------------

def test_undeclared_proxy_arg_reaches_run_but_not_history_or_cache_key(
        cli, busybox_image: str, tmp_path: Path, session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nARG DECLARED=d\n"
                   "RUN echo \"$http_proxy $DECLARED\" > /seen\n")
    proxy = "http://user:secret@127.0.0.1:3128"
    _build(cli, "--build-arg", f"http_proxy={proxy}", "-t", "proxied", str(ctx))
    assert cli("run", "--rm", "proxied", "cat", "/seen").stdout == f"{proxy} d\n"
    history = _image(session_store, "proxied").config["history"]
    assert history[-1]["created_by"] == "|1 DECLARED=d /bin/sh -c echo \"$http_proxy " \
                                        "$DECLARED\" > /seen"
    assert "secret" not in cli("history", "--no-trunc", "proxied").stdout
    # another proxy: the same step from the cache
    out = _build(cli, "--build-arg", "http_proxy=http://other:3128", str(ctx)).stdout
    assert out.count(" ---> Using cache") == 2


# -- CLI paths ----------------------------------------------------------------------------------

def test_dockerfile_on_stdin_with_a_directory_context(cli, busybox_image: str,
                                                      tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN false\n", {"data.txt": "from the dir\n"})
    _build(cli, "-f", "-", "-t", "stdin-df-dir", str(ctx),
           input="FROM busybox\nCOPY data.txt /\nCMD [\"cat\", \"/data.txt\"]\n")
    assert cli("run", "--rm", "stdin-df-dir").stdout == "from the dir\n"


def test_relative_dockerfile_path_from_cwd_then_context(cli, busybox_image: str,
                                                        tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\n", {"x.txt": "x\n"})
    (ctx / "sub").mkdir()
    (ctx / "sub" / "in-context.Dockerfile").write_text("FROM busybox\nLABEL which=context\n")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "df").mkdir(parents=True)
    (elsewhere / "df" / "cwd.Dockerfile").write_text("FROM busybox\nLABEL which=cwd\n")

    def build(dockerfile: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "sandbox", "build", "-q", "-f", dockerfile,
                               str(ctx)], cwd=elsewhere, env=cli.env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return str(proc.stdout.strip())

    from sandbox.images import ImageStore
    from sandbox.store import Store

    images = ImageStore(Store(cli.env["SANDBOX_ROOT"]))
    assert images.get(build("df/cwd.Dockerfile")).config["config"]["Labels"] == {"which": "cwd"}
    assert images.get(build("sub/in-context.Dockerfile")).config["config"]["Labels"] == {
        "which": "context"}
    proc = cli("build", "-f", "no/such.Dockerfile", str(ctx))
    assert proc.returncode == 125 and "cannot locate specified Dockerfile" in proc.stderr
    (ctx / "binary.Dockerfile").write_bytes(b"FROM busybox\n\xff\xfe\n")
    proc = cli("build", "-f", str(ctx / "binary.Dockerfile"), str(ctx))
    assert (proc.returncode, proc.stderr) == (
        125, f"sandbox: Dockerfile {ctx / 'binary.Dockerfile'} is not UTF-8 text (line 2)\n")
    (ctx / ".dockerignore").write_bytes(b"\xff\n")
    (ctx / "copy.Dockerfile").write_text("FROM busybox\nCOPY x.txt /\n")
    proc = cli("build", "-f", str(ctx / "copy.Dockerfile"), str(ctx))
    assert (proc.returncode, proc.stderr) == (
        125, f"sandbox: Dockerfile:2: ignore file {ctx / '.dockerignore'} is not UTF-8 text "
             "(line 1)\n")  # met by the COPY on line 2, which reads the context


def test_build_arg_without_value_comes_from_the_environment(cli, busybox_image: str,
                                                            tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nARG FROMENV=default\nARG UNSET=kept\n"
                   "RUN echo \"$FROMENV $UNSET\" > /v\n")
    env = {"FROMENV": "from-the-env"}
    _build(cli, "--build-arg", "FROMENV", "--build-arg", "UNSET", "-t", "argenv", str(ctx),
           env=env)
    assert cli("run", "--rm", "argenv", "cat", "/v").stdout == "from-the-env kept\n"


def _host_platform() -> str:
    from sandbox.oci import host_platform

    return str(host_platform().normalized())


def test_platform_flag_and_from_platform(cli, busybox_image: str, tmp_path: Path,
                                         session_store: Path) -> None:
    host = _host_platform()
    ctx = _context(tmp_path, "FROM --platform=$BUILDPLATFORM busybox\nARG TARGETPLATFORM\n"
                   "ARG TARGETARCH\nRUN echo \"$TARGETPLATFORM $TARGETARCH\" > /p\n")
    _build(cli, "--platform", host, "-t", "plat", str(ctx))
    arch = host.split("/")[1]
    assert cli("run", "--rm", "plat", "cat", "/p").stdout == f"{host} {arch}\n"
    assert _image(session_store, "plat").config["architecture"] == arch
    other = "linux/s390x" if arch != "s390x" else "linux/amd64"
    proc = _build(cli, "--platform", other, str(ctx), ok=False)
    assert proc.returncode == 125 and f"cannot build for {other}" in proc.stderr
    assert proc.stderr.count("\n") == 1
    bad = _context(tmp_path / "bad", f"FROM --platform={other} busybox\n")
    proc = _build(cli, str(bad), ok=False)
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"sandbox: Dockerfile:1: cannot build for {other}")


def test_from_a_digest_reference(cli, busybox_image: str, tmp_path: Path,
                                 session_store: Path) -> None:
    digest = _image(session_store, busybox_image).manifest_digest
    ctx = _context(tmp_path, f"FROM busybox@{digest}\nRUN echo pinned > /p\n")
    _build(cli, "-t", "pinned", str(ctx))
    image = _image(session_store, "pinned")
    assert image.diff_ids[0] == _image(session_store, busybox_image).diff_ids[0]
    wrong = _context(tmp_path / "wrong", f"FROM busybox@sha256:{'1' * 64}\n")
    proc = _build(cli, str(wrong), ok=False)
    assert proc.returncode == 125 and "Dockerfile:1:" in proc.stderr


def test_copy_link_in_a_real_build(cli, busybox_image: str, tmp_path: Path,
                                   session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox AS src\nRUN echo staged > /staged\n"
                   "FROM busybox\nCOPY --link f.txt /linked/\n"
                   "COPY --link --from=src /staged /linked/\n"
                   "CMD [\"sh\", \"-c\", \"cat /linked/f.txt /linked/staged\"]\n",
                   {"f.txt": "f\n"})
    _build(cli, "-t", "linked", str(ctx))
    assert cli("run", "--rm", "linked").stdout == "f\nstaged\n"
    assert len(_image(session_store, "linked").diff_ids) == 3


# -- bad tags -----------------------------------------------------------------------------------

def _store_files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for sub in ("blobs", "build-cache", "layers")
            if (store / sub).exists() for p in (store / sub).rglob("*")}


@pytest.mark.parametrize(("tag", "message"), [
    ("Bad Tag", "invalid reference format"),
    ("name:a:b", "invalid reference format"),
    (f"name@sha256:{'a' * 64}", "refusing to create a tag with a digest reference"),
])
def test_invalid_tag_is_refused_before_building(cli, busybox_image: str, tmp_path: Path,
                                                session_store: Path, tag: str,
                                                message: str) -> None:
    ctx = _context(tmp_path, f"FROM busybox\nRUN echo {tag.replace(' ', '_')} > /t\n")
    before = _store_files(session_store)
    proc = _build(cli, "-t", "good", "-t", tag, str(ctx), ok=False)
    assert proc.returncode == 125
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"sandbox: invalid argument {tag!r} for \"-t, --tag\" flag: ")
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert _store_files(session_store) == before


# -- a failing RUN under -q ---------------------------------------------------------------------

def test_quiet_failing_run_shows_step_line_code_and_its_output(cli, busybox_image: str,
                                                               tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN echo fine-step\n"
                   "RUN echo to-stdout; echo to-stderr >&2; exit 3\nRUN echo never\n")
    proc = _build(cli, "-q", str(ctx), ok=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "Step 3/4 : RUN echo to-stdout; echo to-stderr >&2; exit 3",
        "to-stdout", "to-stderr",
        "sandbox: Dockerfile:3: The command '/bin/sh -c echo to-stdout; echo to-stderr >&2; "
        "exit 3' returned a non-zero code: 3"]
    loud = _build(cli, str(ctx), ok=False)
    assert "to-stderr" in loud.stderr and "fine-step" in loud.stdout
    assert loud.stderr.endswith("Dockerfile:3: The command '/bin/sh -c echo to-stdout; echo "
                                "to-stderr >&2; exit 3' returned a non-zero code: 3\n")


# -- RUN --network cannot escalate ------------------------------------------------------------

def test_run_network_host_needs_the_command_lines_host_network(cli, busybox_image: str,
                                                                tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN --network=host ls /sys/class/net > /nets\n"
                   "RUN --network=none ls /sys/class/net > /none\n"
                   "CMD [\"cat\", \"/nets\", \"/none\"]\n")
    proc = _build(cli, str(ctx), ok=False)
    assert proc.returncode == 125 and proc.stderr.count("\n") == 1
    assert "Dockerfile:2: RUN --network=host needs the host network" in proc.stderr
    assert "sandbox build --network host" in proc.stderr
    assert "Running in" not in proc.stdout
    _build(cli, "--network", "host", "-t", "net-allowed", str(ctx))
    host_nets = sorted(os.listdir("/sys/class/net"))
    assert cli("run", "--rm", "net-allowed").stdout.split() == [*host_nets, "lo"]


# -- interrupted builds -------------------------------------------------------------------------

INTERRUPTED = ("FROM busybox\nARG NAP\nRUN echo $((6*7))-step-started; sleep $NAP; "
               "echo done > /x\nCMD [\"cat\", \"/x\"]\n")


def _step_containers(store: Path) -> list[str]:
    """Containers of build steps: those with a build owner, or labelled as a step."""
    import json

    out = []
    root = store / "containers"
    for cid in os.listdir(root) if root.exists() else []:
        cdir = root / cid
        if (cdir / "build-owner").exists():
            out.append(cid)
            continue
        try:
            labels = json.loads((cdir / "config.json").read_text())["spec"].get("labels") or {}
        except (OSError, ValueError, KeyError):
            continue
        if labels.get("sandbox.build") == "step":
            out.append(cid)
    return out


def _interrupt(cli, ctx: Path, nap: str, signum: int,
               tag: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "build", "--no-cache",
                             "--build-arg", f"NAP={nap}", "-t", tag, str(ctx)],
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line == "42-step-started\n":
            break
    assert seen[-1] == "42-step-started\n", seen
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()  # the step (and its processes, by their parent-death signal) with it
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(seen) + out, err)


def _gone(text: str) -> bool:
    import time

    from procs import processes_with

    deadline = time.monotonic() + 10
    while processes_with(text) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not processes_with(text)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_build_leaves_nothing_half_written(cli, busybox_image: str, tmp_path: Path,
                                                       session_store: Path,
                                                       signame: str) -> None:
    import signal

    from sandbox.errors import ImageNotFound

    signum = int(getattr(signal, signame))
    nap = {"SIGINT": "901", "SIGTERM": "902", "SIGKILL": "903"}[signame]
    ctx = _context(tmp_path, INTERRUPTED)
    tag = f"interrupted-{signame.lower()}"
    blobs = session_store / "blobs" / "sha256"
    blobs_before = set(os.listdir(blobs))
    proc = _interrupt(cli, ctx, nap, signum, tag)
    if signum == signal.SIGKILL:
        assert proc.returncode == -signum
    else:
        assert proc.returncode == 128 + signum
        assert proc.stderr == f"sandbox: Dockerfile:3: build interrupted by {signame} during " \
                              "a RUN step; nothing was stored\n"
        assert _step_containers(session_store) == []
    assert _gone(f"sleep {nap}")  # the step's processes died with it
    assert not any(str(session_store) in line for line in Path("/proc/self/mountinfo")
                   .read_text().splitlines())
    with pytest.raises(ImageNotFound):
        _image(session_store, tag)
    assert set(os.listdir(blobs)) == blobs_before  # no layer of the killed step
    # the next build cleans what a SIGKILL left, and works
    _build(cli, "--build-arg", "NAP=0", "-t", tag, str(ctx))
    assert _step_containers(session_store) == []
    assert [n for n in os.listdir(session_store / "tmp") if n.endswith(".build")] == []
    assert cli("run", "--rm", tag).stdout == "done\n"


# -- sandbox history of a built image -----------------------------------------------------------

def test_history_shows_steps_like_docker_history(cli, busybox_image: str, tmp_path: Path,
                                                 session_store: Path) -> None:
    import re

    # the top layers are not unpacked in the store (nothing ran on them): their SIZE is the
    # content of their files, as Docker's, not the compressed blob
    ctx = _context(tmp_path, "FROM busybox\nENV A=1\nWORKDIR /w\nRUN printf 'six!!\\n' > /f\n"
                   "COPY twelve /twelve\nCMD [\"cat\", \"/f\"]\n", {"twelve": "eleven+one\n\n"})
    _build(cli, "-t", "histcols", str(ctx))
    image = _image(session_store, "histcols")
    proc = cli("history", "histcols")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert re.split(r"\s{2,}", header.strip()) == ["IMAGE", "CREATED", "CREATED BY", "SIZE",
                                                   "COMMENT"]
    assert len(rows) == len(image.config["history"])
    assert rows[0].startswith(image.id[7:19] + " ")
    assert all(row.startswith("<missing> ") for row in rows[1:])
    starts = [header.index(c) for c in ("CREATED BY", "SIZE", "COMMENT")]
    cells = [(row[starts[0]:starts[1]].strip(), row[starts[1]:starts[2]].strip())
             for row in rows]
    assert cells[1][0].startswith("/bin/sh -c #(nop) COPY file:") and cells[1][1] == "12B"
    assert cells[:1] + cells[2:5] == [
        ('/bin/sh -c #(nop)  CMD ["cat" "/f"]', "0B"),
        ("/bin/sh -c printf 'six!!\\n' > /f", "6B"),
        ("/bin/sh -c #(nop) WORKDIR /w", "0B"),
        ("/bin/sh -c #(nop)  ENV A=1", "0B")]
    full = cli("history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}",
               "histcols").stdout.splitlines()
    assert full[0].startswith(image.id + "|")
    for flag in ("-H=false", "--human=false"):  # raw sizes and RFC 3339 dates
        raw = cli("history", flag, "--format", "{{.CreatedSince}}|{{.Size}}", "histcols")
        assert raw.returncode == 0, raw.stderr
        since, size = raw.stdout.splitlines()[1].split("|")
        assert size == "12" and since == image.config["history"][-2]["created"]
    assert cli("history", "-H", "histcols").returncode == 0  # -H is a boolean: no value taken
    assert [line.split("|")[1] for line in full] == [
        h["created_by"] for h in reversed(image.config["history"])]
    long = _context(tmp_path / "long", "FROM busybox\nRUN echo a-command-longer-than-the-"
                    "forty-five-columns-shown > /x\n")
    _build(cli, "-t", "histlong", str(long))
    header, row = cli("history", "histlong").stdout.splitlines()[:2]
    shown = row[header.index("CREATED BY"):header.index("SIZE")].strip()
    assert shown == "/bin/sh -c echo a-command-longer-than-the-fo…"  # 44 + "…", as Docker


def test_run_bind_mount_content_is_in_the_cache_key(cli, busybox_image: str,
                                                    tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN --mount=type=bind,source=data,target=/d "
                   "cat /d/v > /seen\nCMD [\"cat\", \"/seen\"]\n", {"data/v": "one\n"})
    _build(cli, "-t", "bound", str(ctx))
    assert cli("run", "--rm", "bound").stdout == "one\n"
    (ctx / "data" / "v").write_text("two\n")
    out = _build(cli, "-t", "bound", str(ctx)).stdout
    assert "Step 2/3 : RUN --mount=type=bind,source=data,target=/d cat /d/v > /seen\n" \
           " ---> Using cache" not in out
    assert cli("run", "--rm", "bound").stdout == "two\n"
