"""Benchmark: layer unpack (ours vs GNU tar vs umoci), gzip backends, and write_layer.

Builds a ~100 MB layer from host files (``/usr/lib/python3.11``, ``/usr/share/vim``,
``/usr/share/zoneinfo``: big and tiny files, symlinks, hard links), compresses it with gzip and
zstd, then times each contestant ``--runs`` times into a fresh directory and prints medians and
ratios against GNU tar. Run as an unprivileged user::

    python bench/bench_unpack.py [--runs 5] [--workdir DIR] [--sources PATH ...]
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from sandbox import _layer_codec, layers

logger = logging.getLogger("bench_unpack")

DEFAULT_SOURCES = ["/usr/lib/python3.11", "/usr/share/vim", "/usr/share/zoneinfo"]


def build_layers(work: Path, sources: list[str]) -> dict[str, Path]:
    plain = work / "layer.tar"
    rel = [s.lstrip("/") for s in sources if os.path.exists(s)]
    subprocess.run(["tar", "--format=pax", "-C", "/", "-cf", str(plain), *rel], check=True,
                   stderr=subprocess.DEVNULL)
    data = plain.read_bytes()
    gz = work / "layer.tar.gz"
    gz.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    zst = work / "layer.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    return {"plain": plain, "gzip": gz, "zstd": zst}


def timed_rounds(contestants: dict[str, tuple[Callable[[], object], Callable[[], None]]],
                 runs: int) -> dict[str, float]:
    """Median seconds per contestant; rounds interleave contestants so noise hits all alike.

    Before each timed run the destination is reset and dirty pages are synced (not timed), so
    one contestant's writeback is never billed to the next.
    """
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(runs):
        for name, (fn, reset) in contestants.items():
            reset()
            os.sync()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    for _, reset in contestants.values():
        reset()
    return {name: statistics.median(values) for name, values in samples.items()}


def fresh(dest: Path) -> Callable[[], None]:
    def reset() -> None:
        if dest.exists():
            subprocess.run(["chmod", "-R", "u+rwx", str(dest)], check=False)
            shutil.rmtree(dest)
        dest.mkdir()
    return reset


def ours(blob: Path, dest: Path, gzip_backend: str | None = None) -> Callable[[], object]:
    def run() -> object:
        saved = _layer_codec._igzip
        if gzip_backend == "zlib":
            _layer_codec._igzip = None
        try:
            with open(blob, "rb") as f:
                return layers.unpack_layer(f, dest, owners="xattr")
        finally:
            _layer_codec._igzip = saved
    return run


def gnu_tar(blob: Path, dest: Path, flag: str) -> Callable[[], object]:
    argv = ["tar", "--no-same-owner", "-C", str(dest), "-xf", str(blob)]
    if flag:
        argv.insert(1, flag)
    return lambda: subprocess.run(argv, check=True)


def umoci_setup(work: Path, plain: Path) -> Path | None:
    if shutil.which("umoci") is None:
        return None
    layout = work / "oci"
    try:
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True,
                       capture_output=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True,
                       capture_output=True)
        subprocess.run(["umoci", "raw", "add-layer", "--image", f"{layout}:t", str(plain)],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        logger.warning("umoci unavailable: %s", exc.stderr)
        return None
    return layout


def umoci_unpack(layout: Path, dest: Path) -> Callable[[], object]:
    def run() -> object:
        shutil.rmtree(dest)  # umoci wants to create the bundle itself
        return subprocess.run(["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:t",
                               str(dest)], check=True, capture_output=True)
    return run


def decompress_only(blob: Path, backend: str) -> Callable[[], object]:
    def run() -> object:
        with open(blob, "rb") as f:
            if backend == "isal":
                from isal import igzip
                reader: io.BufferedIOBase = igzip.IGzipFile(  # type: ignore[no-untyped-call]
                    fileobj=f, mode="rb")
            else:
                reader = gzip.GzipFile(fileobj=f, mode="rb")
            while reader.read(1 << 20):
                pass
        return None
    return run


def compress_only(data: bytes, backend: str) -> Callable[[], object]:
    def run() -> object:
        c: Any
        if backend == "isal":
            from isal import isal_zlib
            c = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
        else:
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
        for i in range(0, len(data), 1 << 20):
            c.compress(data[i:i + (1 << 20)])
        return c.flush()
    return run


def write_ours(tree: Path, compression: str | None) -> Callable[[], object]:
    def run() -> object:
        with open(os.devnull, "wb") as out:
            return layers.write_layer(tree, out, compression=compression)  # type: ignore[arg-type]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--sources", nargs="+", default=DEFAULT_SOURCES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-unpack-", dir=args.workdir))
    try:
        run_all(work, args.sources, args.runs)
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def run_all(work: Path, sources: list[str], runs: int) -> None:
    blobs = build_layers(work, sources)
    dest = work / "dest"
    reset = fresh(dest)
    reset()
    size = blobs["plain"].stat().st_size
    print(f"layer: {size / 1e6:.1f} MB uncompressed, gzip {blobs['gzip'].stat().st_size / 1e6:.1f}"
          f" MB, zstd {blobs['zstd'].stat().st_size / 1e6:.1f} MB; {runs} runs, medians")
    unpackers: dict[str, tuple[Callable[[], object], Callable[[], None]]] = {}
    for kind, flag in (("plain", ""), ("gzip", "-z"), ("zstd", "--zstd")):
        unpackers[f"gnu tar {kind}"] = (gnu_tar(blobs[kind], dest, flag), reset)
        unpackers[f"ours {kind}"] = (ours(blobs[kind], dest), reset)
    unpackers["ours gzip (zlib backend)"] = (ours(blobs["gzip"], dest, "zlib"), reset)
    layout = umoci_setup(work, blobs["plain"])
    if layout is not None:
        unpackers["umoci raw unpack --rootless (gzip)"] = (umoci_unpack(layout, dest), reset)
    results = timed_rounds(unpackers, runs)
    noop: Callable[[], None] = lambda: None  # noqa: E731
    data = blobs["plain"].read_bytes()
    results.update(timed_rounds({
        "gunzip only: zlib": (decompress_only(blobs["gzip"], "zlib"), noop),
        "gunzip only: isal": (decompress_only(blobs["gzip"], "isal"), noop),
        "gzip only: zlib -6": (compress_only(data, "zlib"), noop),
        "gzip only: isal -2": (compress_only(data, "isal"), noop),
    }, runs))
    reset()
    with open(blobs["plain"], "rb") as f:
        layers.unpack_layer(f, dest, owners="xattr")
    tar_out = work / "out.tar.gz"
    writers: dict[str, tuple[Callable[[], object], Callable[[], None]]] = {
        f"write_layer {c}": (write_ours(dest, c), noop) for c in ("gzip", "zstd", None)}
    writers["gnu tar -czf"] = (lambda: subprocess.run(
        ["tar", "-C", str(dest), "-czf", str(tar_out), "."], check=True), noop)
    results.update(timed_rounds(writers, runs))
    report(results, size)


def report(results: dict[str, float], size: int) -> None:
    ref = {"plain": results["gnu tar plain"], "gzip": results["gnu tar gzip"],
           "zstd": results["gnu tar zstd"]}
    print(f"{'contestant':40} {'median s':>9} {'MB/s':>8} {'vs GNU tar':>11}")
    for name, secs in results.items():
        kind = next((k for k in ("zstd", "gzip", "plain") if k in name), None)
        ratio = ""
        if name.startswith(("ours", "umoci")) and kind is not None:
            ratio = f"{secs / ref[kind]:.2f}x"
        elif name == "write_layer gzip":
            ratio = f"{secs / results['gnu tar -czf']:.2f}x (-czf)"
        print(f"{name:40} {secs:9.3f} {size / 1e6 / secs:8.1f} {ratio:>11}")


if __name__ == "__main__":
    main()
