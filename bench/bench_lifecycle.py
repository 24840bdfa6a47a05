"""Detached-container lifecycle and port forwarding, against podman and direct loopback.

1. ``run -d`` + ``exec true`` + ``rm -f``, each step timed, for ``sandbox`` and (where it works
   rootless here) ``podman --runtime runc``; also ``sandbox run --rm busybox true`` start-to-exit,
   the yardstick of the ``exec`` target.
2. A bulk TCP transfer (``--mb`` MiB) through a published port (``-p``) against the same
   transfer over direct loopback: a Python sink in the built-in ``host`` image receives it.

    python bench/bench_lifecycle.py [--runs 15] [--mb 256]

Targets (issue 5): ``exec true`` ≤ 2 × ``run --rm true``; port forwarding ≥ 25 % of loopback.
Machines are noisy: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import imagekit  # noqa: E402

SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    n = 0
    buf = bytearray(1 << 20)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        n += k
    c.sendall(str(n).encode()); c.close()
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-400:]}")
    return took, proc.stdout.strip()


def cycle(base: list[str], image: str, env: dict[str, str] | None,
          extra: list[str]) -> dict[str, float]:
    t_run, cid = run([*base, "run", "-d", *extra, image, "sleep", "300"], env)
    t_exec, _ = run([*base, "exec", cid, "true"], env)
    # podman's rm -f sends SIGTERM and waits 10 s by default: -t 0 is docker's rm -f (SIGKILL)
    t_rm, _ = run([*base, "rm", "-f", *(["-t", "0"] if "podman" in base[0] else []), cid],
                  env)
    return {"run -d": t_run, "exec true": t_exec, "rm -f": t_rm,
            "cycle": t_run + t_exec + t_rm}


def transfer(port: int, mb: int) -> float:
    """Seconds to push ``mb`` MiB to 127.0.0.1:port and get the byte count back."""
    chunk = b"\0" * (1 << 20)
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"nothing listens on {port}")
    t = time.perf_counter()
    with s:
        for _ in range(mb):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        got = s.recv(64)
    took = time.perf_counter() - t
    if int(got) != mb << 20:
        raise SystemExit(f"transfer lost data: {got!r}")
    return took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_ports(sandbox: list[str], env: dict[str, str], mb: int, runs: int) -> None:
    direct_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(direct_port)])
    _, cid = run([*sandbox, "run", "-d", "-p", "127.0.0.1::9000", "host", "python3", "-c",
                  SINK, "9000"], env)
    try:
        _, mapped = run([*sandbox, "port", cid, "9000"], env)
        fwd_port = int(mapped.rsplit(":", 1)[1])
        direct, forwarded = [], []
        for _ in range(runs):
            direct.append(transfer(direct_port, mb))
            forwarded.append(transfer(fwd_port, mb))
    finally:
        sink.kill()
        sink.wait()
        run([*sandbox, "rm", "-f", cid], env)
    d, f = statistics.median(direct), statistics.median(forwarded)
    print(f"\nbulk TCP, {mb} MiB, {runs} runs (medians)")
    print(f"  direct loopback      {mb / d:9.0f} MiB/s")
    print(f"  through -p forwarder {mb / f:9.0f} MiB/s   = {100 * d / f:.0f}% of loopback "
          "(target >= 25%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--no-podman", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    env = {**os.environ, "SANDBOX_ROOT": str(work / "store")}
    sandbox = [sys.executable, "-m", "sandbox"]
    script = shutil.which("sandbox", path=str(Path(sys.executable).parent))
    if script:
        sandbox = [script]
    tar = imagekit.make_busybox_tar(work / "busybox.tar", work)
    run([*sandbox, "import", str(tar), "bench-busybox"], env)
    run([*sandbox, "run", "--rm", "bench-busybox", "true"], env)
    tools: dict[str, tuple[list[str], dict[str, str] | None, list[str]]] = {
        "sandbox": (sandbox, env, []),
    }
    podman = shutil.which("podman")
    if podman and not args.no_podman:
        pod = [podman, "--runtime", "runc", "--root", str(work / "podman"),
               "--runroot", str(work / "podman-run")]
        try:
            run([*pod, "import", str(tar), "bench-busybox"])
            cycle(pod, "bench-busybox", None, ["--network", "none"])
            tools["podman --runtime runc"] = (pod, None, ["--network", "none"])
        except SystemExit as exc:
            print(f"podman: skipped ({str(exc)[:200]})")
    results: dict[str, dict[str, list[float]]] = {t: {} for t in tools}
    run_rm: list[float] = []
    for _ in range(args.runs):  # interleaved: every tool sees the same noise
        run_rm.append(run([*sandbox, "run", "--rm", "bench-busybox", "true"], env)[0])
        for name, (base, tenv, extra) in tools.items():
            for step, t in cycle(base, "bench-busybox", tenv, extra).items():
                results[name].setdefault(step, []).append(t)
    print(f"lifecycle, {args.runs} runs (median ms)")
    steps = ["run -d", "exec true", "rm -f", "cycle"]
    print(f"  {'tool':<24}" + "".join(f"{s:>12}" for s in steps))
    med = {name: {s: statistics.median(v) for s, v in r.items()} for name, r in results.items()}
    for name in tools:
        print(f"  {name:<24}" + "".join(f"{med[name][s] * 1000:12.1f}" for s in steps))
    rr = statistics.median(run_rm)
    ours = med["sandbox"]
    print(f"  sandbox run --rm true: {rr * 1000:.1f} ms; exec true / run --rm = "
          f"{ours['exec true'] / rr:.2f} (target <= 2)")
    for name in tools:
        if name != "sandbox":
            print(f"  {name} / sandbox: " + ", ".join(
                f"{s} {med[name][s] / ours[s]:.1f}x" for s in steps))
    bench_ports(sandbox, env, args.mb, max(3, args.runs // 3))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
