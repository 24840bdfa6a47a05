"""Test images made from what the machine has: busybox from Debian's busybox-static.

No network: a busybox rootfs is a static binary, its applet links and a few files in /etc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

__all__ = ["busybox_path", "make_busybox_rootfs", "make_busybox_tar"]

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
