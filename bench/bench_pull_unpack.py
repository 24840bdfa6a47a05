"""Pull + unpack benchmark: ``sandbox pull`` against ``podman pull`` and ``skopeo copy`` +
``umoci unpack --rootless``, same local registry, same run; then a second pull of the image
already present.

Builds a ~100 MB multi-layer image (many small files and a few big ones, gzip, as real images
are), pushes it to a Distribution registry on 127.0.0.1 (started here), and times N fresh pulls
of each tool into fresh directories. Prints medians and ratios. Run it as an unprivileged user:

    python bench/bench_pull_unpack.py [--runs 3] [--mb 100]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "sandbox"))

from registry_fixtures import start_registry, store_with  # noqa: E402

from sandbox import oci  # noqa: E402
from sandbox.oci import digest_of  # noqa: E402
from sandbox.registry import RegistryClient  # noqa: E402

WORDS = [f"word{i}" for i in range(2000)]


def _text(rnd: random.Random, n: int) -> bytes:
    return " ".join(rnd.choices(WORDS, k=n // 6)).encode()[:n]


def _layer(rnd: random.Random, index: int, small: int, small_size: int, big: int,
           big_size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(small // 100 + 1):
            info = tarfile.TarInfo(f"usr/share/l{index}/d{d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for i in range(small):
            data = _text(rnd, small_size)
            info = tarfile.TarInfo(f"usr/share/l{index}/d{i // 100}/f{i}.txt")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            info.uid = info.gid = (0 if i % 7 else 1000)
            tar.addfile(info, io.BytesIO(data))
        for i in range(big):
            data = rnd.randbytes(big_size // 2) + _text(rnd, big_size - big_size // 2)
            info = tarfile.TarInfo(f"opt/l{index}/blob{i}.bin")
            info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(total_mb: int) -> tuple[bytes, dict[str, bytes]]:
    """Five gzip layers, about ``total_mb`` uncompressed: small files and big files."""
    try:
        from isal import igzip as gz
    except ImportError:  # pragma: no cover
        import gzip as gz  # type: ignore[no-redef]
    rnd = random.Random(42)
    mb = 1 << 20
    per = total_mb * mb // 5
    specs = [(4000, per // 4000, 0, 0), (0, 0, 3, per // 3), (2000, per // 2 // 2000, 2, per // 4),
             (1000, per // 2 // 1000, 1, per // 2), (3000, per // 3000, 0, 0)]
    layers, descs, diff_ids = [], [], []
    for i, (small, small_size, big, big_size) in enumerate(specs):
        tar = _layer(rnd, i, small, small_size, big, big_size)
        blob = gz.compress(tar, 3 if gz.__name__.startswith("isal") else 6)
        layers.append(blob)
        diff_ids.append(digest_of(tar))
        descs.append({"mediaType": oci.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": digest_of(blob),
                      "size": len(blob)})
    import json

    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_OCI_MANIFEST,
                           "config": {"mediaType": oci.MEDIA_TYPE_OCI_CONFIG,
                                      "digest": digest_of(config), "size": len(config)},
                           "layers": descs}).encode()
    blobs = {digest_of(b): b for b in [config, manifest, *layers]}
    print(f"image: 5 layers, {sum(len(x) for x in layers) / mb:.1f} MB compressed, "
          f"{total_mb} MB uncompressed, {sum(s[0] for s in specs)} small files")
    return manifest, blobs


def timed(name: str, runs: int, prepare: Callable[[], object],
          action: Callable[[object], None], cleanup: Callable[[object], None]) -> list[float]:
    times = []
    for _ in range(runs):
        ctx = prepare()
        try:
            start = time.perf_counter()
            action(ctx)
            times.append(time.perf_counter() - start)
        finally:
            cleanup(ctx)
    print(f"{name:<34} median {statistics.median(times):7.3f}s  runs "
          + " ".join(f"{t:.3f}" for t in times), flush=True)
    return times


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-unpack-"))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(work / "run")}  # ours: its pause process too
    Path(env["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    reg = start_registry(work / "registry")
    try:
        manifest, blobs = build_image(args.mb)
        src = store_with(work / "src", blobs)
        ref = f"{reg.host}/bench/image:1"
        with RegistryClient() as client:
            client.push(ref, src, digest_of(manifest))
        results: dict[str, float] = {}
        counter = iter(range(10_000))

        def fresh() -> Path:
            d = work / f"run{next(counter)}"
            d.mkdir()
            return d

        def rm_userns(d: object) -> None:
            subprocess.run([sys.executable, "-c", "import sys\n"
                            "from sandbox.runtime.userns import run_in_userns\n"
                            "from sandbox.store import rm_rf\n"
                            "run_in_userns(rm_rf, sys.argv[1], under=sys.argv[2])",
                            str(d), str(work)], check=False)

        # as an installed package runs: with its bytecode cached (the repo may be read-only)
        sb_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        sb_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")

        def sandbox_pull(d: object) -> None:
            run([sys.executable, "-m", "sandbox", "--root", str(Path(str(d)) / "root"),
                 "pull", "-q", ref], env=sb_env)

        warm = fresh()
        sandbox_pull(warm)  # warm-up: bytecode cache, registry files in the page cache
        rm_userns(warm)
        results["sandbox pull (+unpack)"] = statistics.median(
            timed("sandbox pull (+unpack)", args.runs, fresh, sandbox_pull, rm_userns))
        present = fresh()
        sandbox_pull(present)
        results["sandbox pull (present)"] = statistics.median(
            timed("sandbox pull (already present)", args.runs, lambda: present, sandbox_pull,
                  lambda d: None))
        rm_userns(present)

        if shutil.which("podman"):
            for driver in ("vfs", "overlay"):
                def podman_pull(d: object, driver: str = driver) -> None:
                    p = Path(str(d))
                    run(["podman", "--root", str(p / "root"), "--runroot", str(p / "runroot"),
                         "--storage-driver", driver, "pull", "-q", "--tls-verify=false", ref],
                        env=env)

                def podman_clean(d: object, driver: str = driver) -> None:
                    p = Path(str(d))
                    subprocess.run(["podman", "--root", str(p / "root"), "--runroot",
                                    str(p / "runroot"), "--storage-driver", driver, "unshare",
                                    "rm", "-rf", str(p / "root"), str(p / "runroot")],
                                   env=env, capture_output=True, check=False)
                    shutil.rmtree(p, ignore_errors=True)

                try:
                    results[f"podman pull ({driver})"] = statistics.median(
                        timed(f"podman pull ({driver})", args.runs, fresh, podman_pull,
                              podman_clean))
                except RuntimeError as exc:
                    print(f"podman pull ({driver}): skipped: {exc}")
        if shutil.which("skopeo") and shutil.which("umoci"):
            def skopeo_umoci(d: object) -> None:
                p = Path(str(d))
                run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                     f"oci:{p / 'layout'}:1"], env=env)
                run(["umoci", "unpack", "--rootless", "--image", f"{p / 'layout'}:1",
                     str(p / "bundle")], env=env)

            results["skopeo copy + umoci unpack"] = statistics.median(
                timed("skopeo copy + umoci unpack", args.runs, fresh, skopeo_umoci,
                      lambda d: shutil.rmtree(str(d), ignore_errors=True)))
        ours = results["sandbox pull (+unpack)"]
        print("\nratios (other / sandbox; > 1 means sandbox is faster):")
        for name, value in results.items():
            if not name.startswith("sandbox"):
                print(f"  {name:<32} {value / ours:6.2f}x")
        podman = [v for k, v in results.items() if k.startswith("podman")]
        if podman:
            print(f"  second pull / fastest podman pull: "
                  f"{results['sandbox pull (present)'] / min(podman):.3f} (target < 0.1)")
        return 0
    finally:
        reg.stop()
        _stop_podman_pause(Path(env["XDG_RUNTIME_DIR"]))
        if not args.keep:
            subprocess.run([sys.executable, "-c", "import sys\n"
                            "from sandbox.runtime.userns import run_in_userns\n"
                            "from sandbox.store import rm_rf\n"
                            "run_in_userns(rm_rf, sys.argv[1], under=sys.argv[2])",
                            str(work), str(work.parent)], check=False, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


def _stop_podman_pause(run_dir: Path) -> None:
    """Rootless podman leaves a pause process per XDG_RUNTIME_DIR: end ours, by its pid."""
    import signal

    try:
        os.kill(int((run_dir / "libpod" / "tmp" / "pause.pid").read_text().strip()),
                signal.SIGKILL)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
