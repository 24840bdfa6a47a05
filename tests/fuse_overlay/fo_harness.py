"""Run union scenarios inside a user+mount namespace (``unshare -Urm python fo_harness.py``).

Reads a JSON request on stdin, prints a JSON answer on stdout.  Every mount it makes is
unmounted before it answers, and every server it starts has exited.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fo_scenarios  # noqa: E402

KINDS = ("kernel", "fuse", "fuse-overlayfs", "plain")
LIBFUSE_SEEN: set[str] = set()  # the libfuse each fuse_overlay server had loaded once live


def _umount(mnt: Path) -> None:
    for cmd in (["umount", str(mnt)], ["fusermount3", "-u", str(mnt)], ["umount", "-l", str(mnt)]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


@contextmanager
def mounted(
    kind: str, lowers: list[Path], upper: Path | None, work: Path | None, mnt: Path,
    extra: str = "",
) -> Iterator[Path]:
    """Mount *kind* over the layers at *mnt*; ``plain`` copies them into *mnt* instead."""
    if kind == "plain":
        for layer in reversed(lowers):
            shutil.copytree(layer, mnt, symlinks=True, dirs_exist_ok=True)
        yield mnt
        return
    opts = "lowerdir=" + ":".join(map(str, lowers))
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    if extra:
        opts += "," + extra
    proc: subprocess.Popen[bytes] | None = None
    if kind == "kernel":
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts + ",userxattr", str(mnt)],
                       check=True, capture_output=True)
    elif kind == "fuse-overlayfs":
        subprocess.run(["fuse-overlayfs", "-o", opts, str(mnt)], check=True, capture_output=True)
    elif kind == "fuse":
        proc = start_fuse_overlay(opts, mnt)
    else:
        raise ValueError(kind)
    try:
        yield mnt
    finally:
        _umount(mnt)
        if proc is not None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_fuse_overlay(opts: str, mnt: Path, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """Start ``python -m fuse_overlay -f --ready-fd`` and wait until the mount is live."""
    read_end, write_end = os.pipe()
    log = open(f"{mnt}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "fuse_overlay", "-f", "--ready-fd", str(write_end), "-o", opts,
         str(mnt)],
        pass_fds=[write_end], stderr=log, stdin=subprocess.DEVNULL,
    )
    log.close()
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], timeout)
    answer = os.read(read_end, 16) if ready else b""
    os.close(read_end)
    if not answer.startswith(b"ok"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"fuse_overlay did not mount: {Path(f'{mnt}.log').read_text()}")
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    LIBFUSE_SEEN.update(os.path.basename(ln.split()[-1]) for ln in maps.splitlines()
                        if "/libfuse" in ln)
    return proc


def prepare(base: Path, layers: list[fo_scenarios.Tree]) -> tuple[list[Path], Path, Path, Path]:
    lowers = []
    for i, tree in enumerate(layers):
        layer = base / f"l{i}"
        layer.mkdir(parents=True)
        fo_scenarios.build(layer, tree)
        lowers.append(layer)
    upper, work, mnt = base / "u", base / "w", base / "m"
    for path in (upper, work, mnt):
        path.mkdir()
    return lowers, upper, work, mnt


def run_scenarios(root: Path, kinds: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        out[kind] = {}
        for name in names:
            sc = fo_scenarios.SCENARIOS[name]
            if not sc.runs_on(kind):
                continue
            base = root / kind / name
            lowers, upper, work, mnt = prepare(base, sc.layers)
            if sc.upper_tree:
                fo_scenarios.build(upper, sc.upper_tree)
            if not sc.upper:
                upper = work = None
            try:
                with mounted(kind, lowers, upper, work, mnt, sc.extra) as m:
                    out[kind][name] = sc.fn(m)
            except Exception:
                out[kind][name] = {"exception": traceback.format_exc(limit=4)}
    return out


def run_compat(root: Path, pairs: list[list[str]], name: str) -> dict[str, Any]:
    """Write with one implementation, unmount, read the same upper with another."""
    sc = fo_scenarios.SCENARIOS[name]
    out: dict[str, Any] = {}
    for writer, reader in pairs:
        base = root / f"{writer}-then-{reader}"
        lowers, upper, work, mnt = prepare(base, sc.layers)
        try:
            with mounted(writer, lowers, upper, work, mnt) as m:
                sc.fn(m)
                written = fo_scenarios.snapshot(m)
            work2 = base / "w2"
            work2.mkdir()
            with mounted(reader, lowers, upper, work2, mnt) as m:
                read = fo_scenarios.snapshot(m)
            out[f"{writer}->{reader}"] = {"written": written, "read": read}
        except Exception:
            out[f"{writer}->{reader}"] = {"exception": traceback.format_exc(limit=4)}
    return out


def servers_for(mnt: Path) -> list[int]:
    """Pids of fuse_overlay servers whose command line names *mnt*."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fuse_overlay" in cmdline and str(mnt).encode() in cmdline:
            pids.append(int(entry))
    return pids


def run_cli(root: Path) -> dict[str, Any]:
    """The command as a drop-in for fuse-overlayfs: daemon mode, readiness, exit on unmount."""
    out: dict[str, Any] = {}
    lowers, upper, work, mnt = prepare(root / "daemon", [fo_scenarios.TOP, fo_scenarios.BASE])
    opts = f"lowerdir={lowers[0]}:{lowers[1]},upperdir={upper},workdir={work}"
    cmd = [sys.executable, "-m", "fuse_overlay", "-o", opts, str(mnt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out["daemon_rc"] = proc.returncode
    out["live_on_return"] = os.path.ismount(mnt) and (mnt / "a").read_text() == "top a\n"
    st = [os.stat(mnt).st_dev, os.stat(mnt / "dir").st_dev, os.stat(mnt / "dir/x").st_dev,
          os.stat(mnt / "b").st_dev]
    out["one_st_dev"] = len(set(st)) == 1 and st[0] != os.stat(upper).st_dev
    mounts = Path("/proc/self/mountinfo").read_text()
    line = next((ln for ln in mounts.splitlines() if f" {mnt} " in ln), "")
    out["allow_other"] = "allow_other" in line
    out["default_permissions"] = "default_permissions" in line
    out["server_running"] = bool(servers_for(mnt))
    subprocess.run(["umount", str(mnt)], check=True)
    deadline = time.monotonic() + 10
    while servers_for(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["server_exited_after_umount"] = not servers_for(mnt)
    # the engine killed with SIGKILL: --die-with-parent unmounts and exits
    parent = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m fuse_overlay -f --die-with-parent -o {opts} {mnt} "
                     "& wait"])
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["die_with_parent_mounted"] = os.path.ismount(mnt)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while (servers_for(mnt) or os.path.ismount(mnt)) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["die_with_parent_cleaned"] = not servers_for(mnt) and not os.path.ismount(mnt)
    if os.path.ismount(mnt):
        _umount(mnt)
    bad = subprocess.run([sys.executable, "-m", "fuse_overlay", "-o", f"{opts},bogus_opt=1",
                          str(mnt)], capture_output=True, text=True, timeout=60)
    out["bad_option"] = [bad.returncode, bad.stderr.count("\n"), "bogus_opt" in bad.stderr]
    bad_mnt = subprocess.run([sys.executable, "-m", "fuse_overlay", "-o", opts,
                              str(root / "missing")], capture_output=True, text=True, timeout=60)
    out["bad_mountpoint_rc"] = bad_mnt.returncode
    return out


def command_pids(mnt: Path) -> list[int]:
    """Pids of fuse_overlay servers (module or console script) whose command line names *mnt*."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"fuse_overlay" in args or any(a.endswith(b"/fuse-overlay") for a in args)
        if ours and str(mnt).encode() in args:
            pids.append(int(entry))
    return pids


def _wait(cond: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


FSYNC_SPY = """
import os, sys
log = open(sys.argv[1], "a", buffering=1)
for name in ("fsync", "fdatasync"):
    def spy(fd, _real=getattr(os, name), _name=name):
        log.write(_name + "\\n")
        return _real(fd)
    setattr(os, name, spy)
from fuse_overlay.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def fsyncs_reaching_upper(root: Path, extra: str) -> dict[str, Any]:
    """fsync and fdatasync through the mount; the calls the server made on its upper files."""
    lowers, upper, work, mnt = prepare(root, [fo_scenarios.BASE])
    log = root / "fsync.log"
    log.touch()
    opts = f"lowerdir={lowers[0]},upperdir={upper},workdir={work}" + extra
    start = subprocess.run([sys.executable, "-c", FSYNC_SPY, str(log), "-o", opts, str(mnt)],
                           capture_output=True, text=True, timeout=60)
    try:
        fd = os.open(mnt / "synced", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"data\n")
        os.fsync(fd)
        os.write(fd, b"more\n")
        os.fdatasync(fd)
        os.close(fd)
        with open(mnt / "a", "r+b") as fh:  # a copied-up lower file
            fh.write(b"A")
            os.fsync(fh.fileno())
    finally:
        _umount(mnt)
    _wait(lambda: not command_pids(mnt))
    return {"rc": start.returncode, "calls": log.read_text().split(),
            "upper": (upper / "synced").read_text(), "a": (upper / "a").read_text()}


def run_options(root: Path) -> dict[str, Any]:
    """-d, the console script, fusermount3 -u, volatile."""
    out: dict[str, Any] = {}
    lowers, upper, work, mnt = prepare(root / "debug", [fo_scenarios.TOP, fo_scenarios.BASE])
    opts = f"lowerdir={lowers[0]}:{lowers[1]},upperdir={upper},workdir={work}"
    with open(root / "debug.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fuse_overlay", "-d", "-o", opts, str(mnt)],
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    mounted_ = _wait(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30)
    out["debug_mounted"] = mounted_ and os.path.ismount(mnt)
    if out["debug_mounted"]:
        (mnt / "a").read_text()
        out["debug_foreground"] = proc.poll() is None  # -d implies -f: still serving
        _umount(mnt)
    try:
        out["debug_rc"] = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out["debug_rc"] = proc.wait()
    err_text = (root / "debug.err").read_text(errors="replace")
    out["debug_libfuse_trace"] = "opcode: LOOKUP" in err_text and "opcode: INIT" in err_text

    script = Path(sys.executable).parent / "fuse-overlay"
    out["script_exists"] = script.is_file() and os.access(script, os.X_OK)
    if out["script_exists"]:
        lowers, upper, work, mnt = prepare(root / "script", [fo_scenarios.TOP, fo_scenarios.BASE])
        opts = f"lowerdir={lowers[0]}:{lowers[1]},upperdir={upper},workdir={work}"
        run = subprocess.run([str(script), "-o", opts, str(mnt)], capture_output=True, text=True,
                             timeout=60)
        out["script_rc"] = run.returncode
        out["script_live"] = os.path.ismount(mnt) and (mnt / "a").read_text() == "top a\n"
        out["script_server"] = bool(command_pids(mnt))
        fm = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
        out["fusermount3_rc"] = [fm.returncode, fm.stderr.strip()]
        out["server_exited_after_fusermount3"] = _wait(lambda: not command_pids(mnt))
        out["unmounted_after_fusermount3"] = not os.path.ismount(mnt)
        if os.path.ismount(mnt):
            _umount(mnt)
    out["fsync_default"] = fsyncs_reaching_upper(root / "fsync", "")
    out["fsync_volatile"] = fsyncs_reaching_upper(root / "volatile", ",volatile")
    return out


def run_multiuid(root: Path) -> dict[str, Any]:
    """Other uids of the user namespace through the mount: explicit allow_other, ACLs enforced.

    Works in a fresh directory under the temporary directory: uid 1000 cannot pass *root*'s
    private ancestors (pytest makes them 0700)."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="fo-multiuid-"))
    try:
        shared.chmod(0o755)
        return _multiuid(shared)
    finally:
        make_removable(shared)
        shutil.rmtree(shared, ignore_errors=True)


def _multiuid(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for extra in ("allow_other", "noacl"):
        lowers, upper, work, mnt = prepare(root / extra, [fo_scenarios.TOP, fo_scenarios.BASE])
        for path in (root / extra, *lowers, upper, mnt):
            path.chmod(0o755)
        (lowers[1] / "secret").write_text("s\n")
        (lowers[1] / "secret").chmod(0o600)
        opts = f"lowerdir={lowers[0]}:{lowers[1]},upperdir={upper},workdir={work},{extra}"
        proc = start_fuse_overlay(opts, mnt)
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
            line = next((ln for ln in mountinfo if f" {mnt} " in ln), "")

            def as_1000(*cmd: str) -> list[Any]:
                p = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                                    *cmd], capture_output=True, text=True)
                return [p.returncode, p.stdout]

            acl = fo_scenarios.posix_acl((1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 0, 0xFFFFFFFF),
                                         (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))
            before = as_1000("cat", str(mnt / "secret"))
            setacl = fo_scenarios.res(lambda m=mnt, v=acl: os.setxattr(
                m / "secret", "system.posix_acl_access", v))
            out[extra] = {
                "allow_other": "allow_other" in line,
                "ls": as_1000("ls", str(mnt)),
                "cat": as_1000("cat", str(mnt / "a")),
                "secret_before_acl": before[0] != 0,
                "setacl": setacl,
                "secret_after_acl": as_1000("cat", str(mnt / "secret")),
            }
        finally:
            _umount(mnt)
            proc.wait(timeout=20)
    return out


def make_removable(root: Path) -> None:
    """The kernel leaves ``work/work`` at mode 000: let the caller delete the tree."""
    for dirpath, dirnames, _files in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)


def main() -> int:
    request = json.load(sys.stdin)
    root = Path(request["root"])
    if request["mode"] == "scenarios":
        names = request.get("names") or sorted(fo_scenarios.SCENARIOS)
        answer: Any = run_scenarios(root, request["kinds"], names)
        answer["_libfuse"] = sorted(LIBFUSE_SEEN)
    elif request["mode"] == "cli":
        answer = run_cli(root)
    elif request["mode"] == "options":
        answer = run_options(root)
    elif request["mode"] == "multiuid":
        answer = run_multiuid(root)
    elif request["mode"] == "compat":
        answer = run_compat(root, request["pairs"], request["name"])
    else:
        raise SystemExit(f"unknown mode {request['mode']}")
    make_removable(root)
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
