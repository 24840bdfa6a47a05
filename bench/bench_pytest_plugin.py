"""Benchmark of the pytest plugin: per-test overhead of a container per test.

A suite of N trivial tests (default 200) is run, each variant in a fresh ``python -m pytest``:

  plain          def test(i): pass
  forked         @pytest.mark.forked (pytest-forked; the reference "plain forked test")
  container      @pytest.mark.container + the ``container`` fixture (host image), body empty
  container_run  the same, and the body runs ``container.run(["true"])``
  isolate        @pytest.mark.container(isolate=True): the body runs in a forked container
  *_n2           the same with ``-n 2`` (pytest-xdist, 2 workers)
  podman         the body runs ``podman --runtime runc run --rm IMAGE true`` (a busybox image
                 imported into podman; fewer tests, scaled), when podman works rootless

Each variant is run ``--runs`` times (default 3) interleaved; the median wall time is kept.
Per-test overhead = (median - median of plain) / N. Targets (issue 7): container overhead at most
15x the forked overhead and at least 10x lower than podman per test; isolate at most 3x forked.

    python bench/bench_pytest_plugin.py [-n 200] [--runs 3] [--podman-tests 20] [--json]

Run it as an unprivileged user with user namespaces (the plugin's own requirement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORKED_SHIM = '''
# pytest-forked 1.7 cannot marshal pytest 9's NodeId in its reports: send it as the nodeid
# string that TestReport() takes.
try:
    import pytest_forked
    _orig = pytest_forked.serialize_report

    def _serialize(rep):
        d = _orig(rep)
        node_id = d.pop("_id", None)
        if node_id is not None:
            d["nodeid"] = str(node_id)
        return d

    pytest_forked.serialize_report = _serialize
except ImportError:
    pass
'''

BODIES = {
    "plain": "def test_t(i):\n    pass\n",
    "forked": "@pytest.mark.forked\ndef test_t(i):\n    pass\n",
    "container": "@pytest.mark.container\ndef test_t(i, container):\n    pass\n",
    "container_run": ("@pytest.mark.container\ndef test_t(i, container):\n"
                      "    container.run(['true'], check=True)\n"),
    "isolate": "@pytest.mark.container(isolate=True)\ndef test_t(i):\n    pass\n",
    "podman": ("def test_t(i):\n    subprocess.run(PODMAN + ['run', '--rm', IMAGE, 'true'], "
               "check=True, stdout=subprocess.DEVNULL)\n"),
}


def write_suite(root: Path, name: str, n: int, podman: list[str], image: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "conftest.py").write_text(FORKED_SHIM)
    header = (f"import subprocess\nimport pytest\nPODMAN = {podman!r}\nIMAGE = {image!r}\n\n"
              f"@pytest.fixture(params=range({n}))\ndef i(request):\n    return request.param\n\n")
    (d / "test_suite.py").write_text(header + BODIES[name.removesuffix("_n2")])
    return d


def run_suite(d: Path, store: Path, extra: list[str]) -> float:
    env = {**os.environ, "SANDBOX_ROOT": str(store), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *extra], cwd=d, env=env, capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{d.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def podman_setup(tmp: Path) -> tuple[list[str], str] | None:
    podman = shutil.which("podman")
    runc = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None)
    if podman is None or runc is None:
        return None
    sys.path.insert(0, str(HERE.parent / "tests"))
    try:
        from imagekit import make_busybox_tar

        tar = make_busybox_tar(tmp / "busybox.tar", tmp)
    except Exception as exc:  # noqa: BLE001
        print(f"podman: no busybox image ({exc})", file=sys.stderr)
        return None
    cmd = [podman, "--runtime", runc]
    image = "localhost/sandbox-bench-busybox:latest"
    if subprocess.run(cmd + ["import", str(tar), image], capture_output=True,
                      check=False).returncode != 0:
        return None
    if subprocess.run(cmd + ["run", "--rm", image, "true"], capture_output=True,
                      check=False).returncode != 0:
        print("podman: rootless run does not work here", file=sys.stderr)
        return None
    return cmd, image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="tests per suite")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--podman-tests", type=int, default=20)
    ap.add_argument("--no-xdist", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n
    import importlib.util

    if importlib.util.find_spec("pytest_forked") is None:
        # without it @pytest.mark.forked is an unknown mark, the "forked" suite runs unforked
        # and every ratio to it is meaningless
        print("pytest-forked is not installed here, and it is the reference: "
              "pip install pytest-forked", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-pytest-plugin-") as tmpdir:
        tmp = Path(tmpdir)
        store = tmp / "store"
        pod = podman_setup(tmp)
        suites: dict[str, tuple[Path, list[str], int]] = {}
        names = ["plain", "forked", "container", "container_run", "isolate"]
        for name in names:
            suites[name] = (write_suite(tmp, name, n, [], ""), [], n)
        if not args.no_xdist:
            for name in ("plain", "container", "isolate"):
                suites[name + "_n2"] = (write_suite(tmp, name + "_n2", n, [], ""),
                                        ["-n", "2"], n)
        if pod is not None:
            suites["podman"] = (write_suite(tmp, "podman", args.podman_tests, *pod), [],
                                args.podman_tests)
            suites["plain_small"] = (write_suite_alias(tmp, "plain", args.podman_tests), [],
                                     args.podman_tests)
        times: dict[str, list[float]] = {k: [] for k in suites}
        # ours and the plain baselines interleave; podman runs in a block of its own after them:
        # each `podman run` leaves the caches cold and slows whatever runs next (see
        # bench_run.py), which would bill part of podman's cost to the suite after it
        for _ in range(args.runs):
            for name, (d, extra, _count) in suites.items():
                if name != "podman":
                    times[name].append(run_suite(d, store, extra))
        if "podman" in suites:
            d, extra, _count = suites["podman"]
            for _ in range(args.runs):
                times["podman"].append(run_suite(d, store, extra))
        med = {k: statistics.median(v) for k, v in times.items()}
        report = summarise(med, suites, n)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def write_suite_alias(tmp: Path, name: str, n: int) -> Path:
    d = tmp / f"{name}_{n}"
    d.mkdir()
    (d / "conftest.py").write_text(FORKED_SHIM)
    (d / "test_suite.py").write_text(
        f"import pytest\n\n@pytest.fixture(params=range({n}))\ndef i(request):\n"
        f"    return request.param\n\n" + BODIES[name])
    return d


def summarise(med: dict[str, float], suites: dict[str, tuple[Path, list[str], int]],
              n: int) -> dict[str, object]:
    def per_test(name: str, base: str) -> float:
        return (med[name] - med[base]) / suites[name][2] * 1000

    over = {k: per_test(k, "plain_n2" if k.endswith("_n2") else "plain")
            for k in med if k not in ("plain", "plain_n2", "podman", "plain_small")}
    if "podman" in med:
        over["podman"] = per_test("podman", "plain_small")
    ratios = {}
    fk = over.get("forked")
    if fk and fk > 0:
        for k in ("container", "container_run", "isolate"):
            ratios[f"{k}/forked"] = over[k] / fk
    if "podman" in over:
        for k in ("container", "container_run"):
            ratios[f"podman/{k}"] = over["podman"] / over[k]
    return {"tests": n, "median_seconds": med, "overhead_ms_per_test": over, "ratios": ratios,
            "targets": {"container/forked <= 15": ratios.get("container_run/forked"),
                        "podman/container >= 10": ratios.get("podman/container_run"),
                        "isolate/forked <= 3": ratios.get("isolate/forked")}}


def print_report(r: dict[str, object]) -> None:
    print(f"suite of {r['tests']} trivial tests; medians of wall time")
    for k, v in r["median_seconds"].items():  # type: ignore[union-attr]
        print(f"  {k:<16} {v:8.2f} s")
    print("per-test overhead over plain (ms):")
    for k, v in r["overhead_ms_per_test"].items():  # type: ignore[union-attr]
        print(f"  {k:<16} {v:8.1f}")
    print("ratios:")
    for k, v in r["ratios"].items():  # type: ignore[union-attr]
        print(f"  {k:<22} {v:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
