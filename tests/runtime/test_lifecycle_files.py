"""Files, volumes and ports of detached containers: diff/cp/commit round trip, the symlink
escape class of ``cp`` (CVE-2018-15664), volumes that outlive containers, published ports."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from sandbox import lifecycle as lc
from sandbox._ports import parse_publish
from sandbox.containers import RunOptions
from sandbox.errors import SandboxError
from sandbox.spec import Mount

pytestmark = pytest.mark.requires_userns


def run_d(engine, cmd, image="busybox", **kw) -> lc.ContainerState:
    host = kw.pop("host", None)
    s = lc.run_detached(engine, image, cmd, RunOptions(**kw), host)
    engine.made.append(s.id)
    return s


def sh(engine, cid, script: str) -> str:
    r = lc.exec_run(engine, cid, ["sh", "-c", script])
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


@pytest.mark.parametrize("scratch", [False, True], ids=["layer-on-disk", "layer-in-memory"])
def test_diff_cp_commit_round_trip(engine, tmp_path: Path, scratch: bool):
    s = run_d(engine, ["sleep", "60"], scratch=scratch)
    sh(engine, s.id, "echo hello > /hello.txt; rm /etc/group; mkdir -p /data/sub; "
                     "echo deep > /data/sub/f; echo changed >> /etc/passwd")
    changes = lc.diff(engine, s.id)
    assert ("A", "/hello.txt") in changes and ("D", "/etc/group") in changes
    assert ("C", "/etc/passwd") in changes and ("A", "/data/sub/f") in changes
    assert not any(p.startswith(("/proc", "/dev", "/sys")) or p == "/etc/hosts"
                   for _, p in changes)
    lc.copy_from(engine, s.id, "/hello.txt", str(tmp_path / "h.txt"))
    assert (tmp_path / "h.txt").read_text() == "hello\n"
    lc.copy_from(engine, s.id, "/data", str(tmp_path))
    assert (tmp_path / "data" / "sub" / "f").read_text() == "deep\n"
    (tmp_path / "back.txt").write_text("from the host\n")
    lc.copy_to(engine, s.id, str(tmp_path / "back.txt"), "/data/")
    assert sh(engine, s.id, "cat /data/back.txt; stat -c %u /data/back.txt") == \
        "from the host\n0\n"
    image = lc.commit(engine, s.id, f"committed-{os.getpid()}:v1", message="round trip",
                      changes={"Env": ["FROM_COMMIT=1"]})
    assert image.config["history"][-1]["comment"] == "round trip"
    s2 = run_d(engine, ["sleep", "60"], image=f"committed-{os.getpid()}:v1")
    out = sh(engine, s2.id, "cat /hello.txt /data/back.txt; echo $FROM_COMMIT; "
                            "test -e /etc/group || echo no-group")
    assert out == "hello\nfrom the host\n1\nno-group\n"
    assert lc.state(engine, s.id).status == "running"  # commit paused and resumed it
    engine.images.remove(image.id, force=True)


@pytest.mark.requires_subuid
def test_diff_and_commit_of_a_layer_in_memory_read_other_users_files(engine):
    s = run_d(engine, ["sleep", "60"], scratch=True)
    sh(engine, s.id, "mkdir -m 700 /private; echo secret > /private/f; chmod 600 /private/f; "
                     "chown -R 1000:1000 /private")
    assert ("A", "/private/f") in lc.diff(engine, s.id)  # read in the container's namespaces
    image = lc.commit(engine, s.id, f"private-{os.getpid()}:v1")
    s2 = run_d(engine, ["sleep", "60"], image=f"private-{os.getpid()}:v1")
    assert sh(engine, s2.id, "cat /private/f; stat -c %u /private/f") == "secret\n1000\n"
    engine.images.remove(image.id, force=True)


def test_a_layer_in_memory_is_gone_with_its_container(engine):
    s = run_d(engine, ["sleep", "60"], scratch=True)
    if not engine.load_config(s.id)["spec"]["rootfs"]["scratch"]:
        pytest.skip("the storage driver in use keeps the layer on disk (kernel overlay only)")
    sh(engine, s.id, "echo hello > /hello.txt")
    assert ("A", "/hello.txt") in lc.diff(engine, s.id)
    store_upper = os.path.join(engine.store.container_dir(s.id), "upper")
    assert os.listdir(store_upper) == []          # nothing of it in the store's filesystem
    lc.stop(engine, s.id, timeout=0)
    assert lc.diff(engine, s.id) == []
    with pytest.raises(SandboxError, match="writable layer was in memory"):
        lc.commit(engine, s.id, f"gone-{os.getpid()}:v1")


def test_cp_follows_docker_naming_rules(engine, tmp_path: Path):
    s = run_d(engine, ["sleep", "60"])
    sh(engine, s.id, "mkdir -p /d/e; echo 1 > /d/e/one; ln -s /d/e/one /link")
    (tmp_path / "exists").mkdir()
    lc.copy_from(engine, s.id, "/d/.", str(tmp_path / "exists"))  # contents only
    assert (tmp_path / "exists" / "e" / "one").exists()
    lc.copy_from(engine, s.id, "/d", str(tmp_path / "newname"))  # created under the new name
    assert (tmp_path / "newname" / "e" / "one").exists()
    lc.copy_from(engine, s.id, "/link", str(tmp_path / "l"))
    assert os.readlink(tmp_path / "l") == "/d/e/one"  # the link itself
    lc.copy_from(engine, s.id, "/link", str(tmp_path / "f"), follow_links=True)
    assert (tmp_path / "f").read_text() == "1\n"
    with pytest.raises(SandboxError, match="must exist"):
        lc.copy_from(engine, s.id, "/link", str(tmp_path / "nodir") + "/", follow_links=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SandboxError, match="directory to a file"):
        lc.copy_from(engine, s.id, "/d", str(tmp_path / "afile"))
    with pytest.raises(SandboxError, match="could not find"):
        lc.copy_from(engine, s.id, "/nope", str(tmp_path / "x"))
    buf = io.BytesIO()
    lc.copy_from(engine, s.id, "/d", "-", out=buf)
    buf.seek(0)
    assert "d/e/one" in tarfile.open(fileobj=buf).getnames()


def test_cp_symlink_escape_writes_nothing_outside(engine, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    s = run_d(engine, ["sleep", "60"])
    sh(engine, s.id, f"ln -s {outside} /escape; ln -s ../../../../../../../..{outside} /rel; "
                     f"ln -s {secret} /leak; ln -s / /rootlink")
    payload = tmp_path / "payload"
    payload.write_text("pwned\n")
    for dest in ("/escape/", "/escape/pwned", "/rel/pwned", "/rootlink" + str(outside)):
        try:
            lc.copy_to(engine, s.id, str(payload), dest)
        except SandboxError:
            pass
    assert list(outside.iterdir()) == []
    got = tmp_path / "got"
    try:
        lc.copy_from(engine, s.id, "/leak", str(got), follow_links=True)
    except SandboxError:
        pass
    assert not got.exists() or got.read_text() != "host secret\n"
    lc.stop(engine, s.id, timeout=0)  # the stopped path mounts the rootfs itself
    try:
        lc.copy_to(engine, s.id, str(payload), "/escape/pwned2")
    except SandboxError:
        pass
    assert list(outside.iterdir()) == []


def test_cp_into_and_out_of_a_stopped_container(engine, tmp_path: Path):
    s = run_d(engine, ["sh", "-c", "echo made > /made"])
    lc.wait(engine, s.id, timeout=10)
    lc.copy_from(engine, s.id, "/made", str(tmp_path / "made"))
    assert (tmp_path / "made").read_text() == "made\n"
    (tmp_path / "in").write_text("in\n")
    lc.copy_to(engine, s.id, str(tmp_path / "in"), "/in")
    assert ("A", "/in") in lc.diff(engine, s.id)


def test_export_is_the_container_filesystem(engine, tmp_path: Path):
    s = run_d(engine, ["sh", "-c", "echo e > /exported; sleep 60"])
    time.sleep(0.2)
    buf = io.BytesIO()
    lc.export(engine, s.id, buf)
    buf.seek(0)
    names = tarfile.open(fileobj=buf).getnames()
    assert "exported" in names and "bin/busybox" in names
    assert not any(n.startswith("proc/") for n in names)


def test_named_volume_persists_across_containers(engine):
    from sandbox import volumes

    name = f"vol-{os.getpid()}"
    vol = Mount(target="/data", type="volume", source=name)
    s1 = run_d(engine, ["sh", "-c", "echo kept > /data/f; chown 1 /data/f 2>/dev/null; true"],
               mounts=(vol,))
    assert lc.wait(engine, s1.id, timeout=10) == 0
    lc.remove(engine, s1.id, volumes=True)  # named volumes survive rm -v
    s2 = run_d(engine, ["cat", "/data/f"], mounts=(vol,))
    assert lc.wait(engine, s2.id, timeout=10) == 0
    assert list(lc.logs(engine, s2.id)) == [("stdout", b"kept\n")]
    with pytest.raises(SandboxError, match="in use"):
        volumes.remove_volume(engine, name)
    lc.remove(engine, s2.id)
    volumes.remove_volume(engine, name)
    assert name not in [v["Name"] for v in volumes.list_volumes(engine)]


def test_image_volume_is_anonymous_filled_and_removed_with_rm_v(engine):
    from sandbox import volumes

    s = run_d(engine, ["sh", "-c", "mkdir -p /seed; echo from-image > /seed/f"])
    lc.wait(engine, s.id, timeout=10)
    image = lc.commit(engine, s.id, f"withvol-{os.getpid()}",
                      changes={"Volumes": {"/seed": {}}})
    s2 = run_d(engine, ["sh", "-c", "cat /seed/f; sleep 60"], image=f"withvol-{os.getpid()}",
               readonly_rootfs=True)
    time.sleep(0.3)
    mounts = lc.inspect(engine, s2.id)["Mounts"]
    assert len(mounts) == 1 and mounts[0]["Type"] == "volume"
    assert sh(engine, s2.id, "echo w > /seed/w && cat /seed/w") == "w\n"  # ro root, rw volume
    assert list(lc.logs(engine, s2.id))[0] == ("stdout", b"from-image\n")
    lc.remove(engine, s2.id, force=True, volumes=True)
    assert mounts[0]["Name"] not in [v["Name"] for v in volumes.list_volumes(engine)]
    engine.images.remove(image.id, force=True)


def test_parse_publish_shapes():
    assert parse_publish("8080:80") == [parse_publish("0.0.0.0:8080:80/tcp")[0].__class__(
        80, "tcp", "", 8080)]
    assert parse_publish("127.0.0.1::53/udp")[0].host_port == 0
    assert parse_publish("127.0.0.1::53/udp")[0].host_ip == "127.0.0.1"
    assert [b.container_port for b in parse_publish("8000-8001:80-81")] == [80, 81]
    assert parse_publish("80")[0].host_port == 0
    with pytest.raises(SandboxError):
        parse_publish("80/sctp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_httpd_is_reachable_through_a_published_port(engine):
    s = run_d(engine, ["sh", "-c", "mkdir /www; echo it-works > /www/index.html; "
                                   "exec httpd -f -p 8080 -h /www"],
              host=lc.HostOptions(ports=tuple(parse_publish("127.0.0.1::8080"))))
    [(ip, port)] = lc.port(engine, s.id, 8080)
    assert ip == "127.0.0.1" and port > 0
    body = b""
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                body = resp.read()
            break
        except OSError:
            time.sleep(0.05)
    assert body == b"it-works\n"
    # many connections, both directions, a bulk transfer
    sh(engine, s.id, "dd if=/dev/zero of=/www/big bs=1024 count=4096 2>/dev/null")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/big", timeout=10) as resp:
        assert len(resp.read()) == 4096 * 1024
    inspect = lc.inspect(engine, s.id)
    assert inspect["NetworkSettings"]["Ports"]["8080/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(port)}]
    lc.stop(engine, s.id, timeout=1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_busy_host_port_fails_the_start(engine):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(SandboxError, match="cannot publish port"):
            run_d(engine, ["sleep", "10"],
                  host=lc.HostOptions(ports=tuple(parse_publish(f"127.0.0.1:{port}:80"))))


def test_udp_port_forwarding(engine):
    port = _free_port()
    echo = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('127.0.0.1', 9000))\nwhile True:\n    d, a = s.recvfrom(100)\n"
            "    s.sendto(d, a)\n")
    s = run_d(engine, ["python3", "-c", echo], image="host",
              host=lc.HostOptions(ports=tuple(parse_publish(f"127.0.0.1:{port}:9000/udp"))))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(0.5)
        for _ in range(20):
            c.sendto(b"ping\n", ("127.0.0.1", port))
            try:
                data = c.recv(100)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no UDP echo through the published port")
    assert data == b"ping\n"
    lc.remove(engine, s.id, force=True)


@pytest.mark.parametrize("driver", ["overlay", "copy", pytest.param(
    "fuse", marks=pytest.mark.requires_fuse)])
def test_exec_diff_cp_on_every_storage_driver(engine, tmp_path: Path, driver: str):
    s = run_d(engine, ["sh", "-c", "echo hi > /f; rm /etc/group; exec sleep 60"],
              storage_driver=driver)
    time.sleep(0.3)
    assert sh(engine, s.id, "cat /f") == "hi\n"
    changes = lc.diff(engine, s.id)
    assert {("A", "/f"), ("D", "/etc/group"), ("C", "/etc")} <= set(changes), changes
    assert len(changes) == 3, changes
    lc.copy_from(engine, s.id, "/f", str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "hi\n"


def test_diff_of_the_host_image_lists_only_what_changed(engine):
    s = run_d(engine, ["sh", "-c", "echo x > /etc/sandbox-diff-test; rm -f /etc/hostname.bak; "
                       "sleep 30"], image="host")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        changes = lc.diff(engine, s.id)
        if ("A", "/etc/sandbox-diff-test") in changes:
            break
        time.sleep(0.05)
    assert changes == [("C", "/etc"), ("A", "/etc/sandbox-diff-test")]
