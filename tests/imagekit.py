"""Test images made from what the machine has: busybox from Debian's busybox-static, and a
minbase Debian made by mmdebstrap.

No network for busybox: its rootfs is a static binary, its applet links and a few files in
/etc. The Debian tar needs deb.debian.org once per machine (about 40 s with subuid ranges,
90 s with fakechroot) and is cached under ``$XDG_CACHE_HOME/rootless-sandbox-tests``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

__all__ = ["busybox_path", "make_busybox_rootfs", "make_busybox_tar", "debian_mode", "debian_tar",
           "tests_cache_dir"]

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
tty:x:5:
www-data:x:33:
app:x:1000:
extra:x:2000:app
nogroup:x:65534:
"""


def busybox_path() -> str | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            out = subprocess.run(["file", "-L", candidate], capture_output=True, text=True,
                                 check=False).stdout if shutil.which("file") else "static"
            if "dynamically" not in out:
                return candidate
    return None


def make_busybox_rootfs(dest: Path) -> Path:
    """A minimal busybox root filesystem in ``dest``."""
    bb = busybox_path()
    if bb is None:
        raise RuntimeError("a static busybox is needed (apt-get install busybox-static)")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys",
              "dev", "home/app", "var/www", "var/tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(bb, dest / "bin" / "busybox")
    applets = subprocess.run([bb, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = dest / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = applet.count("/")
        link.symlink_to("../" * depth + "bin/busybox")
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    (dest / "etc" / "os-release").write_text('NAME="BusyBox"\nID=busybox\n')
    return dest


def make_busybox_tar(dest_tar: Path, workdir: Path) -> Path:
    root = make_busybox_rootfs(workdir / "busybox-rootfs")
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if info.name in ("home/app", "./home/app"):
            info.uid = info.gid = 1000
        return info

    with tarfile.open(dest_tar, "w") as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=as_root)
    return dest_tar


# -- Debian -------------------------------------------------------------------------------------

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def tests_cache_dir() -> Path:
    """Where images that take long to make are kept between test runs (one per machine and
    user): ``$XDG_CACHE_HOME/rootless-sandbox-tests``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rootless-sandbox-tests"


def _has_subuid_ranges() -> bool:
    import getpass

    user = getpass.getuser()
    uid = str(os.getuid())
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path, encoding="utf-8") as f:
                if not any(line.split(":")[0] in (user, uid) for line in f if ":" in line):
                    return False
        except OSError:
            return False
    return shutil.which("newuidmap") is not None and shutil.which("newgidmap") is not None


def debian_mode() -> tuple[str | None, str]:
    """(mmdebstrap ``--mode``, or None, and why not): ``unshare`` with subuid ranges, else
    ``fakechroot`` (fakechroot and fakeroot installed)."""
    if shutil.which("mmdebstrap") is None:
        return None, "mmdebstrap is needed for the Debian image (apt-get install mmdebstrap)"
    if _has_subuid_ranges():
        return "unshare", ""
    if shutil.which("fakechroot") and shutil.which("fakeroot"):
        return "fakechroot", ""
    return None, ("the Debian image needs /etc/subuid ranges (mmdebstrap --mode=unshare) or "
                  "fakechroot and fakeroot (--mode=fakechroot)")


def debian_tar(suite: str = DEBIAN_SUITE) -> Path:
    """A minbase Debian root filesystem tar, made by mmdebstrap from deb.debian.org once per
    machine and cached (``tests_cache_dir()/debian-<suite>.tar``). A file lock makes
    concurrent callers (xdist workers, parallel runs) build it once; the tar appears
    atomically. Raises RuntimeError when it cannot be made (see `debian_mode`)."""
    import fcntl

    cache = tests_cache_dir()
    out = cache / f"debian-{suite}.tar"
    if out.exists():
        return out
    mode, why = debian_mode()
    if mode is None:
        raise RuntimeError(why)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"debian-{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        partial = cache / f"debian-{suite}.tar.{os.getpid()}.partial"
        try:
            proc = subprocess.run(
                ["mmdebstrap", "--quiet", "--variant=minbase", f"--mode={mode}",
                 "--format=tar", suite, str(partial), DEBIAN_MIRROR],
                capture_output=True, text=True, check=False, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"mmdebstrap --mode={mode} {suite} failed: "
                                   f"{proc.stderr.strip()[-500:]}")
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return out
