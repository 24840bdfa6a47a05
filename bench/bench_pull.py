"""Pull benchmark: our RegistryClient against skopeo and podman, same local registry, same run.

Builds a ~100 MB image of incompressible gzip layers, pushes it to a Distribution registry on
127.0.0.1 (started here), then times N pulls of each tool into fresh temp dirs and prints medians
and ratios. ``podman pull`` also unpacks into its storage, so it is an upper bound to beat.

    python bench/bench_pull.py [--runs 5] [--layers 5] [--layer-mb 20]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "sandbox"))

from registry_fixtures import DirStore, random_image, start_registry, store_with  # noqa: E402

from sandbox.registry import RegistryClient  # noqa: E402


def timed(fn: Callable[[Path], None], runs: int, base: Path, name: str) -> list[float]:
    times = []
    for i in range(runs):
        work = base / f"{name}-{i}"
        work.mkdir()
        t0 = time.perf_counter()
        fn(work)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(work, ignore_errors=True)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--layer-mb", type=float, default=20)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    reg = start_registry(base / "registry")
    try:
        img = random_image([int(args.layer_mb * 1e6)] * args.layers, seed=7)
        total = sum(len(x) for x in img.layers)
        ref = f"{reg.host}/bench/img:1"
        with RegistryClient() as c:
            c.push(ref, store_with(base / "src", img.blobs), img.digest)
        print(f"image: {args.layers} gzip layers, {total / 1e6:.0f} MB, registry {reg.host}")
        env = dict(os.environ, HOME=str(base / "home"))

        def ours(work: Path, parallel: int = 3) -> None:
            with RegistryClient() as c:
                c.pull(ref, DirStore(work / "store"), max_parallel=parallel)

        def skopeo(work: Path) -> None:
            subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{ref}", f"oci:{work}/oci:1"], check=True, env=env)

        def podman(work: Path) -> None:
            subprocess.run(["podman", "--root", str(work / "root"), "--runroot",
                            str(work / "run"), "pull", "--quiet", "--tls-verify=false", ref],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["podman", "--root", str(work / "root"), "--runroot",
                            str(work / "run"), "system", "reset", "--force"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)

        results: dict[str, list[float]] = {}
        results["sandbox (3 parallel)"] = timed(ours, args.runs, base, "ours")
        results["sandbox (1 at a time)"] = timed(lambda w: ours(w, 1), args.runs, base, "ours1")
        present = DirStore(base / "present")
        with RegistryClient() as c:
            c.pull(ref, present)

            def again(work: Path) -> None:
                c.pull(ref, present)
            results["sandbox again (present)"] = timed(again, args.runs, base, "again")
        if shutil.which("skopeo"):
            results["skopeo copy"] = timed(skopeo, args.runs, base, "skopeo")
        if shutil.which("podman"):
            try:
                results["podman pull"] = timed(podman, args.runs, base, "podman")
            except subprocess.CalledProcessError as exc:
                print(f"podman pull failed here ({exc}); skipped")
        ref_time = statistics.median(results["sandbox (3 parallel)"])
        print(f"{'tool':<26}{'median s':>10}{'MB/s':>9}{'vs sandbox':>12}")
        for name, times in results.items():
            med = statistics.median(times)
            print(f"{name:<26}{med:>10.3f}{total / 1e6 / med:>9.0f}{med / ref_time:>11.2f}x")
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
