#!/usr/bin/env python3
"""fuse_overlay against fuse-overlayfs, kernel overlayfs and a bare directory, same run.

Runs itself inside a user+mount namespace (``unshare -Urm``).  Workloads: sequential write and
read of a 200 MB file, creating 5,000 small files, two stat walks of ~20,000 entries, untar of
the Python standard library and ``rm -rf`` of it.  Prints medians (seconds) and ratios to
fuse-overlayfs.  ``--variant NAME=OPTS`` adds fuse_overlay runs with extra -o options, to
measure tuning knobs (threads, timeouts, kernel_cache, max_write).

The two walks: ``stat_walk`` over 25 ``cp -al`` copies of the standard library (every file has
25 names, so it goes through the hard-link bookkeeping), ``stat_walk_nolink`` over as many
copies made of sparse files (one name each, as in most images; no disk space used).

    python bench/bench_fuse_overlay.py [--reps 3] [--variant threads=threaded=1] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

STDLIB = Path(os.path.dirname(os.__file__))
WORKLOADS = ("seq_write", "seq_read", "create_5000", "stat_walk", "stat_walk_nolink", "untar",
             "rm_rf")


def in_userns() -> bool:
    with open("/proc/self/uid_map") as fh:
        return fh.read().split() != ["0", "0", "4294967295"]


def make_fixtures(base: Path, size_mb: int, walk_copies: int) -> tuple[Path, Path]:
    """A lower layer (200 MB file, ~20k-entry tree) and a tar of the standard library."""
    lower = base / "lower"
    (lower / "walk").mkdir(parents=True)
    with open(lower / "big", "wb") as fh:
        block = os.urandom(1 << 20)
        for _ in range(size_mb):
            fh.write(block)
    tar_path = base / "stdlib.tar"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if "__pycache__" in parts or "site-packages" in parts or "dist-packages" in parts:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(tar_path, "w") as tar:
        tar.add(STDLIB, arcname="stdlib", filter=keep)
    (lower / "walk" / "0").mkdir()
    subprocess.run(["tar", "-xf", str(tar_path), "-C", str(lower / "walk" / "0")], check=True)
    for i in range(1, walk_copies):
        subprocess.run(
            ["cp", "-al", str(lower / "walk" / "0"), str(lower / "walk" / str(i))], check=True
        )
    for i in range(walk_copies):
        sparse_copy(lower / "walk" / "0", lower / "walk_nolink" / str(i))
    return lower, tar_path


def sparse_copy(src: Path, dst: Path) -> None:
    """The tree *src* again with sparse files of the same sizes (no hard links, no data)."""
    for dirpath, _dirnames, filenames in os.walk(src):
        target = dst / os.path.relpath(dirpath, src)
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.symlink(os.readlink(path), target / name)
            else:
                with open(target / name, "wb") as fh:
                    fh.truncate(os.path.getsize(path))


def _umount(mnt: Path) -> None:
    for cmd in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


class Mount:
    def __init__(self, kind: str, lower: Path, base: Path, opts: str = "") -> None:
        self.kind, self.lower, self.base, self.opts = kind, lower, base, opts
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Path:
        for name in ("upper", "work", "mnt"):
            (self.base / name).mkdir(parents=True)
        up, work, mnt = self.base / "upper", self.base / "work", self.base / "mnt"
        if self.kind == "bare":
            (mnt / "walk").symlink_to(self.lower / "walk")
            (mnt / "walk_nolink").symlink_to(self.lower / "walk_nolink")
            (mnt / "big").symlink_to(self.lower / "big")
            return mnt
        o = f"lowerdir={self.lower},upperdir={up},workdir={work}"
        if self.kind == "kernel":
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", o + ",userxattr", str(mnt)], check=True
            )
        elif self.kind == "fuse-overlayfs":
            subprocess.run(["fuse-overlayfs", "-o", o, str(mnt)], check=True)
        else:
            src = None
            if self.opts.startswith("@"):  # --src-variant: the package from another tree
                src, self.opts = self.opts[1:], ""
            if self.opts:
                o += "," + self.opts
            r, w = os.pipe()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fuse_overlay",
                    "-f",
                    "--ready-fd",
                    str(w),
                    "-o",
                    o,
                    str(mnt),
                ],
                pass_fds=[w],
                cwd=src,
            )
            os.close(w)
            ready, _, _ = select.select([r], [], [], 30)
            if not ready or not os.read(r, 8).startswith(b"ok"):
                self.proc.kill()
                raise RuntimeError("fuse_overlay did not mount")
            os.close(r)
        return mnt

    def __exit__(self, *exc: object) -> None:
        mnt = self.base / "mnt"
        if self.kind != "bare":
            _umount(mnt)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for dirpath, dirnames, _ in os.walk(self.base):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(self.base)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def run_once(mnt: Path, tar_path: Path, size_mb: int, bare: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    target = mnt / "new"
    (target).mkdir()
    out["seq_write"] = timed(
        lambda: sh(
            "dd", "if=/dev/zero", f"of={target / 'big'}", "bs=1M", f"count={size_mb}", "status=none"
        )
    )
    out["seq_read"] = timed(
        lambda: sh("dd", f"if={mnt / 'big'}", "of=/dev/null", "bs=1M", "status=none")
    )

    def create() -> None:
        d = target / "small"
        d.mkdir()
        payload = b"x" * 100
        for i in range(5000):
            with open(d / f"f{i}", "wb") as fh:
                fh.write(payload)

    out["create_5000"] = timed(create)
    for key, tree in (("stat_walk", "walk"), ("stat_walk_nolink", "walk_nolink")):
        out[key] = timed(functools.partial(sh, "find", f"{mnt / tree}/", "-printf", "%s\n"))
    out["untar"] = timed(lambda: sh("tar", "-xf", str(tar_path), "-C", str(target)))
    out["rm_rf"] = timed(lambda: sh("rm", "-rf", str(target / "stdlib")))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--walk-copies", type=int, default=25)
    ap.add_argument("--kinds", default="bare,kernel,fuse-overlayfs,fuse_overlay")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=OPTS: extra fuse_overlay run with these -o options",
    )
    ap.add_argument(
        "--src-variant",
        action="append",
        default=[],
        help="NAME=DIR: extra fuse_overlay run of the package in DIR (an A/B of code changes)",
    )
    ap.add_argument("--quick", action="store_true", help="1 rep, 50 MB, 5 walk copies")
    args = ap.parse_args(argv)
    if not in_userns():
        os.execvp(
            "unshare",
            [
                "unshare",
                "-Urm",
                sys.executable,
                os.path.abspath(__file__),
                *(sys.argv[1:] if argv is None else argv),
            ],
        )
    if args.quick:
        args.reps, args.size_mb, args.walk_copies = 1, 50, 5
    kinds: list[tuple[str, str, str]] = [
        (k, "fuse" if k == "fuse_overlay" else k, "") for k in args.kinds.split(",")
    ]
    for v in args.variant:
        name, _, opts = v.partition("=")
        kinds.append((f"fuse_overlay[{name}]", "fuse", opts))
    for v in args.src_variant:
        name, _, src = v.partition("=")
        kinds.append((f"fuse_overlay<{name}>", "fuse", f"@{os.path.abspath(src)}"))
    with tempfile.TemporaryDirectory(prefix="bench-fo-", dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        lower, tar_path = make_fixtures(base, args.size_mb, args.walk_copies)
        entries = sum(len(d) + len(f) for _, d, f in os.walk(lower / "walk"))
        print(
            f"# stat walks: {entries} entries each; stdlib tar: "
            f"{tar_path.stat().st_size >> 20} MB; reps: {args.reps}",
            flush=True,
        )
        results: dict[str, dict[str, list[float]]] = {
            k[0]: {w: [] for w in WORKLOADS} for k in kinds
        }
        for rep in range(args.reps):
            for label, kind, opts in kinds:  # interleaved: each rep sees the same machine load
                with Mount(kind, lower, base / f"run-{rep}-{kind}", opts) as mnt:
                    for w, t in run_once(mnt, tar_path, args.size_mb, kind == "bare").items():
                        results[label][w].append(t)
        report(results)
    return 0


def report(results: dict[str, dict[str, list[float]]]) -> None:
    med = {k: {w: statistics.median(v) for w, v in r.items()} for k, r in results.items()}
    ref = med.get("fuse-overlayfs")
    width = max(24, *(len(label) + 1 for label in med))
    print(f"{'median seconds':{width}}" + "".join(f"{w:>17}" for w in WORKLOADS))
    for label, row in med.items():
        print(f"{label:{width}}" + "".join(f"{row[w]:17.3f}" for w in WORKLOADS))
    if ref:
        print(f"\n{'ratio to fuse-overlayfs':{width}}" + "".join(f"{w:>17}" for w in WORKLOADS))
        for label, row in med.items():
            print(f"{label:{width}}" + "".join(f"{row[w] / ref[w]:17.2f}" for w in WORKLOADS))


if __name__ == "__main__":
    sys.exit(main())
