"""Build benchmark: ``sandbox build`` against ``podman build`` and ``buildah bud``, rootless.

One multi-stage Dockerfile (14 steps: RUN, COPY, COPY --from, ENV, WORKDIR, ...) on a busybox
base made from the machine's static busybox (imported into each tool from the same tar). For
each tool: the first build (``--no-cache``, so every step runs), a no-change rebuild (warm
cache) and a rebuild after one copied file changed; medians of ``--runs`` runs and ratios.
``sandbox`` runs as installed (byte-code cached); ``sandbox(nopyc)`` is the same without
byte-code (``PYTHONDONTWRITEBYTECODE=1``, as the test suite runs it).

    python bench/bench_build.py [--runs 5] [--tools sandbox,podman,buildah]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import imagekit  # noqa: E402

DOCKERFILE = """\
FROM busybox AS deps
ENV STAGE=deps
WORKDIR /src
COPY lib/ ./lib/
RUN mkdir -p /out && for i in $(seq 1 200); do echo "line $i" >> /out/generated.txt; done
RUN tar -cf /out/lib.tar lib && wc -l /out/generated.txt > /out/count

FROM busybox
ENV APP=/app LANG=C.UTF-8
WORKDIR /app
COPY --from=deps /out/ ./vendor/
COPY app/ ./
RUN chmod +x run.sh && ./run.sh > built.txt
LABEL org.opencontainers.image.title=bench
CMD ["cat", "/app/built.txt"]
"""


def make_context(base: Path) -> Path:
    ctx = base / "ctx"
    (ctx / "lib").mkdir(parents=True)
    (ctx / "app").mkdir()
    for i in range(50):
        (ctx / "lib" / f"mod{i}.txt").write_text(f"module {i}\n" * 50)
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\necho built $(cat vendor/count)\n")
    (ctx / "app" / "config.txt").write_text("v1\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")


def timed(fn: Callable[[], None], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Tool:
    def __init__(self, name: str, build: list[str], env: dict[str, str]) -> None:
        self.name, self.build, self.env = name, build, env

    def first(self, ctx: Path) -> None:
        run([*self.build, "--no-cache", "-q", "-t", "bench", str(ctx)], self.env)

    def again(self, ctx: Path) -> None:
        run([*self.build, "-q", "-t", "bench", str(ctx)], self.env)


def sandbox_tool(base: Path, bb_tar: Path, *, bytecode: bool) -> Tool:
    env = dict(os.environ, SANDBOX_ROOT=str(base / "sandbox-store"))
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(base / "pyc")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    if not (base / "sandbox-store").exists():
        run([sys.executable, "-m", "sandbox", "import", str(bb_tar), "busybox"], env)
    return Tool("sandbox" if bytecode else "sandbox(nopyc)",
                [sys.executable, "-m", "sandbox", "build"], env)


def podman_tool(base: Path, bb_tar: Path, kind: str) -> Tool | None:
    exe = shutil.which(kind)
    if exe is None:
        return None
    home = base / f"{kind}-home"
    runtime_dir = base / f"{kind}-run"
    for d in (home, runtime_dir):
        d.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime_dir),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"))
    try:
        if kind == "podman":
            run([exe, "--runtime", "runc", "import", str(bb_tar), "busybox"], env)
            return Tool("podman build", [exe, "--runtime", "runc", "build"], env)
        cid = subprocess.run([exe, "from", "scratch"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        run([exe, "add", cid, str(bb_tar), "/"], env)
        run([exe, "commit", "-q", cid, "busybox"], env)
        return Tool("buildah bud", [exe, "bud", "--runtime", "runc", "--layers"], env)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"# {kind} skipped: {exc}")
        return None


def cleanup(base: Path) -> None:
    for kind in ("podman", "buildah"):
        home = base / f"{kind}-home"
        if home.exists() and shutil.which(kind):
            env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(base / f"{kind}-run"))
            subprocess.run([kind, "unshare", "rm", "-rf", str(home)], env=env,
                           capture_output=True, check=False)
    store = base / "sandbox-store"
    if store.exists():
        from sandbox.runtime.userns import run_in_userns

        run_in_userns(shutil.rmtree, str(store), True)
    shutil.rmtree(base, ignore_errors=True)


def bench(tool: Tool, ctx: Path, runs: int) -> dict[str, float]:
    config = ctx / "app" / "config.txt"
    first = statistics.median(timed(lambda: tool.first(ctx), runs))
    tool.again(ctx)
    again = statistics.median(timed(lambda: tool.again(ctx), runs))
    changed = []
    for i in range(runs):
        config.write_text(f"v{i + 2}-{tool.name}\n")
        changed += timed(lambda: tool.again(ctx), 1)
    return {"first": first, "again": again, "changed": statistics.median(changed)}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tools", default="sandbox,sandbox-nopyc,podman,buildah")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        bb_tar = imagekit.make_busybox_tar(base / "busybox.tar", base)
        ctx = make_context(base)
        tools: list[Tool] = []
        wanted = args.tools.split(",")
        if "sandbox" in wanted:
            tools.append(sandbox_tool(base, bb_tar, bytecode=True))
        if "sandbox-nopyc" in wanted:
            tools.append(sandbox_tool(base, bb_tar, bytecode=False))
        for kind in ("podman", "buildah"):
            if kind in wanted and (tool := podman_tool(base, bb_tar, kind)) is not None:
                tools.append(tool)
        print(f"{DOCKERFILE.count(chr(10))} Dockerfile lines, 2 stages; {args.runs} runs; "
              "medians in seconds")
        print(f"{'tool':<16} {'first':>8} {'no-change':>10} {'1 file':>8} {'first/again':>12}")
        results = {}
        for tool in tools:
            r = results[tool.name] = bench(tool, ctx, args.runs)
            print(f"{tool.name:<16} {r['first']:8.3f} {r['again']:10.3f} {r['changed']:8.3f} "
                  f"{r['first'] / r['again']:11.1f}x", flush=True)
        ours = results.get("sandbox")
        for other in ("podman build", "buildah bud"):
            if ours and other in results:
                theirs = results[other]
                print(f"sandbox vs {other}: first {theirs['first'] / ours['first']:.1f}x "
                      f"faster, no-change {theirs['again'] / ours['again']:.1f}x faster, "
                      f"1 file {theirs['changed'] / ours['changed']:.1f}x faster")
    finally:
        cleanup(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
