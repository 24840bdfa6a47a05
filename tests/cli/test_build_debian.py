"""``sandbox build`` on a Debian base: what busybox cannot show (useradd and name lookups in
/etc/passwd, dpkg's database, bash as SHELL, whiteouts of a real distribution's files).

The image is a minbase bookworm made by mmdebstrap once per machine (``imagekit.debian_tar``);
the builds themselves use no network (RUN has only loopback).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import imagekit
import pytest

from sandbox.runtime.idmap import detect_mapping

pytestmark = [pytest.mark.slow, pytest.mark.requires_userns]

SUBUID = detect_mapping().mode == "subuid"


@pytest.fixture(scope="module")
def debian_image(session_store: Path) -> str:
    """``debian:bookworm`` imported into the session store."""
    mode, why = imagekit.debian_mode()
    if mode is None:
        pytest.skip(why)
    from sandbox.errors import ImageNotFound
    from sandbox.images import ImageStore
    from sandbox.store import Store

    images = ImageStore(Store(session_store))
    try:
        images.get("debian:bookworm")
    except ImageNotFound:
        images.import_rootfs(str(imagekit.debian_tar()), ["debian:bookworm"])
    return "debian:bookworm"


def _image(store: Path, name: str) -> Any:
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store(store)).get(name)


def _members(store: Path, digest: str) -> dict[str, tarfile.TarInfo]:
    blob = store / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as tar:
        return {m.name: m for m in tar}


def _layer_of(image: Any, created_by: str) -> str:
    """The digest of the layer the last history entry containing ``created_by`` made."""
    made = [h for h in image.config["history"] if not h.get("empty_layer")]
    assert len(made) == len(image.layers)
    found = [layer["digest"] for h, layer in zip(made, image.layers, strict=True)
             if created_by in h["created_by"]]
    return str(found[-1])


DOCKERFILE = """\
FROM debian:bookworm
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid 2345 crew && useradd --uid 1234 --gid crew --no-create-home \\
    --home-dir /home/builder --shell /bin/bash builder
COPY --chown=builder:crew notes.txt /home/builder/notes.txt
RUN words=(alpha beta gamma); echo "${#words[@]} ${words[1]^^}" > /bash.txt \\
    && dpkg-query -W -f '${Package}\\n' | sort > /pkgs.txt && [[ -s /pkgs.txt ]]
RUN getent passwd builder | cut -d: -f1,3,4,6 > /builder.txt
USER builder
WORKDIR /home/builder
CMD ["bash", "-c", "id -un; cat /bash.txt /builder.txt; grep -x -e bash -e dpkg /pkgs.txt"]
"""


def test_debian_users_dpkg_and_bash(cli, debian_image: str, tmp_path: Path,
                                    session_store: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "notes.txt").write_text("notes\n")
    proc = cli("build", "-t", "debian-users", str(ctx), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = _image(session_store, "debian-users")
    config = image.config["config"]
    assert config["User"] == "builder"
    assert config["WorkingDir"] == "/home/builder"
    assert config["Shell"] == ["/bin/bash", "-o", "pipefail", "-c"]
    assert image.config["history"][-7]["created_by"].startswith(
        "/bin/bash -o pipefail -c groupadd --gid 2345 crew")
    # COPY --chown by name: looked up in the image's /etc/passwd and /etc/group
    copied = _members(session_store, _layer_of(image, "COPY"))["home/builder/notes.txt"]
    assert (copied.uid, copied.gid) == (1234, 2345)
    expected = "3 BETA\nbuilder:1234:2345:/home/builder\nbash\ndpkg\n"
    root = cli("run", "--rm", "-u", "0", "debian-users", timeout=120)
    assert root.returncode == 0, root.stderr
    assert root.stdout == "root\n" + expected
    if SUBUID:
        ran = cli("run", "--rm", "debian-users", timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "builder\n" + expected
        owner = cli("run", "--rm", "debian-users", "stat", "-c", "%U:%G", "notes.txt")
        assert owner.stdout == "builder:crew\n"


def test_debian_whiteouts_and_opaque_dirs_in_the_layer(cli, debian_image: str, tmp_path: Path,
                                                       session_store: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM debian:bookworm\n"
        "RUN rm /etc/debian_version && rm -rf /usr/share/doc/dpkg "
        "&& rm -rf /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d "
        "&& echo mine > /etc/apt/apt.conf.d/only\n"
        "CMD [\"bash\", \"-c\", \"ls /etc/apt/apt.conf.d; test -e /etc/debian_version "
        "|| echo no-version; test -e /usr/share/doc/dpkg || echo no-doc\"]\n")
    proc = cli("build", "-t", "debian-whiteouts", str(ctx), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = _image(session_store, "debian-whiteouts")
    members = set(_members(session_store, image.layers[-1]["digest"]))
    assert {"etc/.wh.debian_version", "usr/share/doc/.wh.dpkg",
            "etc/apt/apt.conf.d/.wh..wh..opq", "etc/apt/apt.conf.d/only"} <= members
    assert not any(m.startswith("usr/share/doc/dpkg/") for m in members)
    ran = cli("run", "--rm", "debian-whiteouts", timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "only\nno-version\nno-doc\n"
