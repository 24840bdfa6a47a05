"""``sandbox export`` of a changed container, then ``sandbox import`` of that tar: the new image
runs, with the base image's files and the container's changes (added, changed, deleted, owners
and modes)."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sandbox"))

from imagetest_helpers import Sandbox  # noqa: E402

pytestmark = pytest.mark.requires_userns

CHANGE = ("echo changed > /etc/motd && rm /etc/group && mkdir -p /data/sub && "
          "echo payload > /data/sub/file && chmod 0751 /data/sub && ln -s /data/sub/file /link")
CHECK = ("cat /etc/motd /data/sub/file /link; test -e /etc/group || echo group-gone; "
         "head -1 /etc/passwd; stat -c %a /data/sub; busybox | head -1 | cut -d' ' -f1")


def test_export_then_import_round_trip(busybox_tar: Path, tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    sb("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "base/bb:1")
    sb("run", "--name", "changed", "base/bb:1", "sh", "-c", CHANGE)
    exported = tmp_path / "changed.tar"
    sb("export", "-o", str(exported), "changed")
    with tarfile.open(exported) as tar:
        names = set(tar.getnames())
    assert {"etc/passwd", "data/sub/file", "link"} <= {n.lstrip("./") for n in names}
    image_id = sb("import", "-m", "round trip", str(exported), "round/trip:1").stdout.strip()
    assert image_id.startswith("sha256:")
    out = sb("run", "--rm", "round/trip:1", "sh", "-c", CHECK).stdout
    assert out.splitlines() == ["changed", "payload", "payload", "group-gone",
                                "root:x:0:0:root:/root:/bin/sh", "751", "BusyBox"]
    sb("rm", "changed")
    sb("rmi", "base/bb:1")  # the imported image stands alone
    assert sb("run", "--rm", "round/trip:1", "cat", "/etc/motd").stdout == "changed\n"
