"""The image commands as a user types them: pull/push against registries, images, inspect,
history, tag, rmi, prune, system df, login/logout, search, save/load, run of a pulled image;
errors are one line on stderr and exit 125."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sandbox"))

from imagetest_helpers import Sandbox, blob_gets, serve_image, store_state  # noqa: E402
from registry_fixtures import (  # noqa: E402
    USERS,
    FakeRegistry,
    Registries,
    free_port,
    random_image,
)

pytestmark = pytest.mark.requires_userns


@pytest.fixture
def sb(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture(scope="module")
def busybox_in_registry(registries: Registries, busybox_tar: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox imported, plus a second layer, pushed with our push: returns its reference."""
    reg = registries.anon()
    sb = Sandbox(tmp_path_factory.mktemp("pusher"))
    ref = f"{reg.host}/test/busybox:1"
    sb("import", "-c", "CMD [\"/bin/sh\"]", str(busybox_tar), ref)
    sb("push", ref)
    return ref


def test_pull_run_and_pull_again(sb: Sandbox, busybox_in_registry: str) -> None:
    ref = busybox_in_registry
    out = sb("pull", ref).stdout
    assert "Status: Downloaded newer image" in out and out.endswith(ref + "\n")
    assert "Digest: sha256:" in out
    run = sb("run", "--rm", ref, "sh", "-c", "echo ran-$((40+2))")
    assert run.stdout.strip() == "ran-42"
    again = sb("pull", ref).stdout
    assert "Status: Image is up to date" in again
    assert sb("pull", "-q", ref).stdout == ref + "\n"


def test_images_listing_shapes(sb: Sandbox, busybox_in_registry: str) -> None:
    ref = busybox_in_registry
    sb("pull", "-q", ref)
    sb("tag", ref, "local/alias:v2")
    table = sb("images", "--digests").stdout.splitlines()
    assert table[0].split()[:4] == ["REPOSITORY", "TAG", "DIGEST", "IMAGE"]
    row = next(r for r in table if r.startswith(ref.rpartition(":")[0]))
    assert "sha256:" in row.split()[2]
    fmt = sb("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(fmt) == sorted([ref, "local/alias:v2"])
    assert sb("images", "--filter", "reference=local/*").stdout.count("\n") == 2
    assert sb("images", "--filter", "dangling=true", "-q").stdout == ""
    rows = [json.loads(line) for line in sb("images", "--format", "json").stdout.splitlines()]
    assert {r["Tag"] for r in rows} == {"1", "v2"}
    assert len(set(sb("images", "-q").stdout.split())) == 1
    assert "invalid filter" in sb.fails("images", "--filter", "colour=blue")


def test_inspect_and_history(sb: Sandbox, busybox_in_registry: str) -> None:
    ref = busybox_in_registry
    sb("pull", "-q", ref)
    (obj,) = json.loads(sb("image", "inspect", ref).stdout)
    for key in ("Id", "RepoTags", "RepoDigests", "Created", "Config", "Architecture", "Os",
                "Size", "RootFS", "GraphDriver", "Metadata"):
        assert key in obj
    assert obj["RepoTags"] == [ref] and obj["RepoDigests"][0].startswith(
        ref.rpartition(":")[0] + "@sha256:")
    assert obj["Config"]["Cmd"] == ["/bin/sh"] and obj["RootFS"]["Type"] == "layers"
    assert sb("image", "inspect", "-f", "{{.Os}}/{{json .Config.Cmd}}", ref).stdout == \
        'linux/["/bin/sh"]\n'
    hist = sb("history", ref).stdout.splitlines()
    assert hist[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert hist[1].startswith(obj["Id"][7:19])
    line = sb.fails("image", "inspect", "no/such:image", code=1)  # as Docker: exit 1
    assert "unable to find image" in line


def test_rmi_and_prune_and_system_df(sb: Sandbox, busybox_in_registry: str) -> None:
    ref = busybox_in_registry
    sb("pull", "-q", ref)
    df = sb("system", "df").stdout.splitlines()
    assert df[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert df[1].split()[:3] == ["Images", "1", "0"]
    sb("tag", ref, "keep/me:1")
    assert sb("rmi", "keep/me:1").stdout == "Untagged: keep/me:1\n"
    assert "Deleted: sha256:" in sb("rmi", "-f", ref).stdout
    state = store_state(sb.root)
    assert state["blobs"] == [] and state["layers"] == [] and state["names"] == []
    sb("pull", "-q", ref)
    out = sb("image", "prune", "-a", "-f").stdout
    assert "Deleted Images:" in out and "Total reclaimed space:" in out
    assert store_state(sb.root)["layers"] == []
    assert "Total reclaimed space: 0B" in sb("image", "prune", "-f").stdout


def test_push_with_skopeo_made_image_and_cross_repo_mount(sb: Sandbox, registries: Registries,
                                                          busybox_in_registry: str,
                                                          tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    reg = registries.anon()
    sb("pull", "-q", busybox_in_registry)
    saved = tmp_path / "bb.tar"
    sb("save", "-o", str(saved), busybox_in_registry)
    skopeo_ref = f"{reg.host}/skopeo/busybox:s"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                    f"docker-archive:{saved}", f"docker://{skopeo_ref}"], check=True,
                   capture_output=True)
    other = Sandbox(tmp_path / "other")
    other("pull", "-q", skopeo_ref)
    assert other("run", "--rm", skopeo_ref, "cat", "/etc/os-release").stdout.startswith("NAME=")
    sb("tag", busybox_in_registry, f"{reg.host}/mounted/busybox:m")
    out = sb("push", f"{reg.host}/mounted/busybox:m").stdout
    assert "Mounted from test/busybox" in out and ": digest: sha256:" in out


def test_concurrent_pulls_download_each_blob_once(sb: Sandbox, fake: FakeRegistry) -> None:
    img = random_image([300_000, 200_000, 100_000], seed=7)
    counts: dict[str, int] = {}
    serve_image(fake, "shared/img", img, delay=0.3, counts=counts)
    procs = [sb.popen("pull", "-q", f"{fake.host}/shared/img") for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    layers = [d["digest"] for d in json.loads(img.manifest)["layers"]]
    assert all(counts.get(d) == 1 for d in layers), counts
    state = store_state(sb.root)
    assert state["tmp"] == [] and state["names"] == [f"{fake.host}/shared/img:latest"]
    assert len(state["layers"]) == 3


def test_sigkill_during_pull_then_pull_again_completes(sb: Sandbox, fake: FakeRegistry) -> None:
    img = random_image([400_000, 300_000], seed=3)
    serve_image(fake, "slow/img", img, delay=1.5)
    proc = sb.popen("pull", f"{fake.host}/slow/img")
    deadline = time.monotonic() + 30
    while not blob_gets(fake) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert store_state(sb.root)["names"] == []
    serve_image(fake, "slow/img", img)
    sb("pull", "-q", f"{fake.host}/slow/img")
    state = store_state(sb.root)
    assert state["tmp"] == [] and state["names"] == [f"{fake.host}/slow/img:latest"]


def test_ctrl_c_during_pull_exits_130_and_leaves_no_temp(sb: Sandbox, fake: FakeRegistry) -> None:
    img = random_image([300_000], seed=4)
    serve_image(fake, "slow/img", img, delay=2)
    proc = sb.popen("pull", f"{fake.host}/slow/img")
    deadline = time.monotonic() + 30
    while not blob_gets(fake) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    state = store_state(sb.root)
    assert state["tmp"] == [] and state["names"] == []
    serve_image(fake, "slow/img", img)
    sb("pull", "-q", f"{fake.host}/slow/img")
    _assert_complete(sb, f"{fake.host}/slow/img:latest", 1)


def _assert_complete(sb: Sandbox, name: str, layers: int) -> None:
    """The image is recorded once, every layer is unpacked (meta.json last), tmp/ is empty."""
    state = store_state(sb.root)
    assert state["tmp"] == [] and state["names"] == [name], state
    assert len(state["layers"]) == layers
    for chain in state["layers"]:
        assert (sb.root / "layers" / chain / "meta.json").is_file()
    (obj,) = json.loads(sb("image", "inspect", name).stdout)
    assert len(obj["RootFS"]["Layers"]) == layers


def _many_files_layer(count: int) -> bytes:
    """A layer slow enough to unpack to interrupt it: ``count`` files owned by uid 1000 (a
    subordinate uid where the user has ranges) in a read-only directory."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("data", 0o755), ("data/locked", 0o555)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, 1000, 1000
            tar.addfile(info)
        for i in range(count):
            info = tarfile.TarInfo(f"data/{'locked/' if i % 2 else ''}f{i}")
            info.size, info.uid, info.gid, info.mode = 4, 1000, 1000, 0o444
            tar.addfile(info, io.BytesIO(b"%04d" % (i % 10000)))
    return buf.getvalue()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupt_during_unpack_then_pull_again_completes(sig: signal.Signals, sb: Sandbox,
                                                           fake: FakeRegistry) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGKILL of every
    process while layers are being unpacked: the next pull removes the half-unpacked temp dirs
    (files of subordinate uids included) and completes."""
    import gzip
    import hashlib

    from registry_fixtures import Image, make_image

    img = make_image([{"small": b"s"}], compressions=("none",))
    big = _many_files_layer(60_000)
    blob = gzip.compress(big, compresslevel=1)
    manifest = json.loads(img.manifest)
    config = json.loads(img.config)
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(big).hexdigest())
    config["history"].append({"created_by": "many files"})
    config_bytes = json.dumps(config).encode()
    manifest["config"].update(digest="sha256:" + hashlib.sha256(config_bytes).hexdigest(),
                              size=len(config_bytes))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
                               "size": len(blob)})
    image = Image(json.dumps(manifest).encode(), img.media_type, config_bytes,
                  [img.layers[0], blob])
    image.blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b
                   for b in [config_bytes, img.layers[0], blob]}
    serve_image(fake, "big/img", image)
    proc = sb.popen("pull", f"{fake.host}/big/img", new_session=True)
    tmp = sb.root / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if tmp.is_dir() and any(n.endswith(".layer") for n in os.listdir(tmp)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the pull ended before its unpack could be interrupted"
    time.sleep(0.3)  # well into the unpack
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        for _ in range(100):  # the namespace helper cleans up after itself, then exits
            if not any(n.endswith(".layer") for n in os.listdir(tmp)):
                break
            time.sleep(0.1)
        assert store_state(sb.root)["tmp"] == []
    else:
        assert proc.returncode == -signal.SIGKILL
        half = [tmp / n for n in os.listdir(tmp) if n.endswith(".layer")]  # left behind
        (data,) = [d / "diff" / "data" for d in half if (d / "diff" / "data").is_dir()]
        from sandbox.runtime.idmap import detect_mapping

        if detect_mapping().mode == "subuid":  # files only the user namespace can remove
            assert data.stat().st_uid != os.getuid()
    assert store_state(sb.root)["names"] == []
    sb("pull", "-q", f"{fake.host}/big/img")
    _assert_complete(sb, f"{fake.host}/big/img:latest", 2)
    chain = [c for c in store_state(sb.root)["layers"]
             if (sb.root / "layers" / c / "diff" / "data").is_dir()]
    assert len(chain) == 1
    data = sb.root / "layers" / chain[0] / "diff" / "data"
    assert len(os.listdir(data)) + len(os.listdir(data / "locked")) == 60_000 + 1


def test_pull_errors_are_one_line(sb: Sandbox, fake: FakeRegistry) -> None:
    assert "connect" in sb.fails("pull", f"127.0.0.1:{free_port()}/a/b:1").lower()
    assert "not found" in sb.fails("pull", f"{fake.host}/missing/image:1")
    assert "invalid reference" in sb.fails("pull", "lib/UPPER")
    assert "platform" in sb.fails("pull", "--platform", "linux/", f"{fake.host}/x").lower()


def test_pull_all_tags(sb: Sandbox, registries: Registries, busybox_in_registry: str) -> None:
    reg = registries.anon()
    src = Sandbox(sb.root.parent / "src")
    src("pull", "-q", busybox_in_registry)
    for tag in ("a", "b"):
        src("tag", busybox_in_registry, f"{reg.host}/alltags/bb:{tag}")
        src("push", "-q", f"{reg.host}/alltags/bb:{tag}")
    out = sb("pull", "--all-tags", "-q", f"{reg.host}/alltags/bb").stdout.split()
    assert sorted(out) == [f"{reg.host}/alltags/bb:a", f"{reg.host}/alltags/bb:b"]
    assert "can't be used with --all-tags" in sb.fails("pull", "-a", f"{reg.host}/alltags/bb:a")


def test_login_logout_and_private_pull(sb: Sandbox, registries: Registries,
                                       busybox_in_registry: str) -> None:
    reg = registries.basic()
    user, password = next(iter(USERS.items()))
    line = sb.fails("login", "-u", user, "--password-stdin", reg.host, input="wrong\n")
    assert "incorrect username or password" in line
    out = sb("login", "-u", user, "--password-stdin", reg.host, input=password + "\n")
    assert out.stdout == "Login Succeeded\n"
    auth = json.loads((sb.root.parent / "home/.config/sandbox/auth.json").read_text())
    assert reg.host in auth["auths"]
    src = Sandbox(sb.root.parent / "src")
    src("pull", "-q", busybox_in_registry)
    private = f"{reg.host}/private/bb:1"
    src("tag", busybox_in_registry, private)
    assert "sandbox login" in src.fails("push", private)
    src.env = sb.env | {"SANDBOX_ROOT": str(src.root)}
    src("push", "-q", private)
    sb("pull", "-q", private)
    assert sb("logout", reg.host).stdout == f"Removing login credentials for {reg.host}\n"
    assert f"sandbox login {reg.host}" in sb.fails("pull", private + "x")
    assert sb("logout", reg.host).stdout == f"Not logged in to {reg.host}\n"


def test_search_without_a_search_api_says_so(sb: Sandbox, registries: Registries) -> None:
    reg = registries.anon()
    line = sb.fails("search", f"{reg.host}/busybox")
    assert "does not offer search" in line


def test_save_to_a_place_that_cannot_be_written_names_it_and_leaves_nothing(
        sb: Sandbox, busybox_tar: Path, tmp_path: Path) -> None:
    """``save -o`` (and ``export -o``, the same helper) into a missing directory: one line
    naming the path asked for, not the temp file beside it; a good path gets the archive and
    no temp file is left."""
    sb("import", str(busybox_tar), "bb")
    missing = tmp_path / "missing" / "x.tar"
    assert sb.fails("save", "-o", str(missing), "bb") == (
        f"sandbox: cannot write {missing}: No such file or directory")
    sb("save", "-o", str(tmp_path / "x.tar"), "bb")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x.tar")) == ["x.tar"]


def test_search_of_a_registry_with_the_v1_api(sb: Sandbox, fake: FakeRegistry) -> None:
    from registry_fixtures import send

    body = json.dumps({"results": [{"name": "library/busybox", "description": "tiny",
                                    "star_count": 3, "is_official": True}]}).encode()
    fake.routes[("GET", "/v1/search")] = lambda req: send(req, 200, body)
    out = sb("search", f"{fake.host}/busy").stdout.splitlines()
    assert out[0].split() == ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]
    assert out[1].split() == ["library/busybox", "tiny", "3", "[OK]"]
    few = sb("search", "--filter", "stars=4", f"{fake.host}/busy").stdout.splitlines()
    assert [row.split() for row in few] == [["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]]
    assert sb.fails("search", "--filter", "stars=many", f"{fake.host}/busy") == (
        "sandbox: invalid filter 'stars=many' (stars=N, a number)")


def test_search_of_a_term_whose_host_is_not_one(sb: Sandbox) -> None:
    assert sb.fails("search", "../x") == (
        "sandbox: invalid registry host '..' in search term '../x'")


def test_save_load_through_a_pipe(sb: Sandbox, busybox_in_registry: str, tmp_path: Path) -> None:
    sb("pull", "-q", busybox_in_registry)
    saved = tmp_path / "x.tar"
    with open(saved, "wb") as out:
        subprocess.run([sys.executable, "-m", "sandbox", "save", busybox_in_registry],
                       stdout=out, env=sb.env, check=True)
    other = Sandbox(tmp_path / "other")
    with open(saved, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "sandbox", "load"], stdin=stdin,
                              capture_output=True, text=True, env=other.env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"Loaded image: {busybox_in_registry}\n"
    other("save", "--format", "oci-archive", "-o", str(tmp_path / "o.tar"), busybox_in_registry)
    assert "no such file" in other.fails("load", "-i", str(tmp_path / "nope.tar"))
    assert other("run", "--rm", busybox_in_registry, "true").returncode == 0

