"""``--network pasta`` and ``--network slirp4netns`` with options, end to end as a user runs them.

Nothing leaves the machine: the only peer reached is a server of the test's own on the host's
loopback, through the helper's host-loopback mapping (pasta ``--map-gw``, slirp4netns
``allow_host_loopback=true``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid

import pytest
from procs import processes_with

from sandbox import _cstate as cs
from sandbox import lifecycle as lc
from sandbox.containers import RunOptions

pytestmark = pytest.mark.requires_userns


def _problem(tool: str) -> str | None:
    if shutil.which(tool) is None:
        return f"{tool} is not installed"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is not usable by this user"
    if tool == "pasta" and _default_route_dev() is None:
        return "pasta copies the host's routed interface, and this host has no default route"
    return None


def _default_route_dev() -> str | None:
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return fields[0]
    return None


def _need(tool: str) -> None:
    problem = _problem(tool)
    if problem:
        pytest.skip(problem)


class LoopbackServer:
    """One-shot HTTP server on the host's 127.0.0.1: records the path asked, answers ``pong``.

    The client is busybox nc keeping its side open until the server has answered and closed
    (``http_get``): an nc that half-closes first waits forever on Debian 12's pasta, which does
    not pass on the host side's later FIN; busybox-static's wget crashes without NSS modules.
    """

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, HTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.got = self.path
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"pong\n")

            def log_message(self, *args: object) -> None:
                pass

        self.got = ""
        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 20
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.handle_request, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.server_close()
        self.thread.join(5)


def http_get(host: str, port: int, path: str) -> str:
    """A shell line that GETs ``path`` and prints the reply's body."""
    return (f"(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'; sleep 4) | nc {host} {port} "
            "| sed '1,/^\\r*$/d'")


@pytest.fixture
def loopback_server():
    server = LoopbackServer()
    yield server
    server.close()


def test_pasta_gives_the_hosts_address_and_routes_and_leaves_nothing(cli, busybox_image):
    _need("pasta")
    ifname = "p" + uuid.uuid4().hex[:8]  # also marks this run's pasta among the processes
    r = cli("run", "--rm", "--network", f"pasta:--ns-ifname,{ifname}", busybox_image, "sh",
            "-c", f"ip -o -4 addr show {ifname}; ip route; cat /etc/resolv.conf")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1:3] == [ifname, "inet"], r.stdout
    assert "default via " in r.stdout and f"dev {ifname}" in r.stdout
    host_addrs = _host_ipv4_addrs(_default_route_dev())
    assert any(f"inet {a}/" in r.stdout for a in host_addrs), (r.stdout, host_addrs)
    for line in r.stdout.splitlines():
        if line.startswith("nameserver"):
            assert not line.split()[1].startswith("127."), line  # mapped, not our own lo
    assert processes_with(ifname) == []


def _host_ipv4_addrs(dev: str | None) -> list[str]:
    import subprocess

    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", str(dev)],
                         capture_output=True, text=True, check=False).stdout
    return [w.split("/")[0] for line in out.splitlines() for i, w in enumerate(line.split())
            if i > 0 and line.split()[i - 1] == "inet"]


def test_pasta_map_gw_reaches_the_hosts_loopback(cli, busybox_image, loopback_server):
    _need("pasta")
    r = cli("run", "--rm", "--network", "pasta:--map-gw", busybox_image, "sh", "-c",
            "gw=$(ip route | awk '/^default/ {print $3; exit}'); "
            + http_get("$gw", loopback_server.port, "/from-pasta"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pong\n"
    loopback_server.thread.join(5)
    assert loopback_server.got == "/from-pasta"


def test_slirp4netns_allow_host_loopback_reaches_the_hosts_loopback(cli, busybox_image,
                                                                    loopback_server):
    _need("slirp4netns")
    r = cli("run", "--rm", "--network", "slirp4netns:allow_host_loopback=true,mtu=1500",
            busybox_image, "sh", "-c",
            "cat /sys/class/net/tap0/mtu; "
            + http_get("10.0.2.2", loopback_server.port, "/from-slirp"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1500\npong\n"
    loopback_server.thread.join(5)
    assert loopback_server.got == "/from-slirp"


def test_bad_pasta_option_is_one_line_and_leaves_nothing(cli, busybox_image):
    _need("pasta")
    name = f"badpasta-{os.getpid()}"
    r = cli("run", "--rm", "--name", name, "--network", "pasta:--no-such-option",
            busybox_image, "true")
    assert r.returncode == 125
    assert r.stderr == ("sandbox: pasta could not set up the container's network: "
                        "/usr/bin/pasta: unrecognized option '--no-such-option'\n")
    assert "Traceback" not in r.stderr
    assert cli("ps", "-a", "-q", "--filter", f"name={name}").stdout == ""
    assert processes_with(name) == []


def test_unknown_network_mode_is_refused_before_anything_starts(cli, busybox_image):
    r = cli("run", "--rm", "--network", "slirp4netns:port_handler=x", busybox_image, "true")
    assert r.returncode == 125 and "unknown slirp4netns option 'port_handler=x'" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the error and its hint


def test_detached_pasta_ends_with_its_monitor(engine):
    _need("pasta")
    ifname = "d" + uuid.uuid4().hex[:8]
    s = lc.run_detached(engine, "busybox", ["sleep", "60"],
                        RunOptions(network=f"pasta:--ns-ifname,{ifname}"), None)
    engine.made.append(s.id)
    r = lc.exec_run(engine, s.id, ["ip", "-o", "link", "show", ifname])
    assert r.returncode == 0, r.stderr
    helpers = processes_with(ifname)
    assert len(helpers) == 1
    monitor = int(cs.read_state(engine.store.container_dir(s.id))["monitor_pid"])
    os.kill(monitor, signal.SIGKILL)  # pasta has a parent-death signal: it goes too
    deadline = time.monotonic() + 10
    while processes_with(ifname) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(ifname) == []
    lc.remove(engine, s.id, force=True)


def test_each_restart_has_one_network_helper(engine):
    _need("pasta")
    from sandbox.lifecycle import HostOptions

    ifname = "r" + uuid.uuid4().hex[:8]
    s = lc.run_detached(engine, "busybox", ["sleep", "0.1"],
                        RunOptions(network=f"pasta:--ns-ifname,{ifname}"),
                        HostOptions(restart="always"))
    engine.made.append(s.id)
    deadline = time.monotonic() + 20
    while lc.inspect(engine, s.id)["RestartCount"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lc.inspect(engine, s.id)["RestartCount"] >= 3
    assert len(processes_with(ifname)) <= 1  # the run's own, not one per restart
    lc.remove(engine, s.id, force=True)
    deadline = time.monotonic() + 10
    while processes_with(ifname) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(ifname) == []
