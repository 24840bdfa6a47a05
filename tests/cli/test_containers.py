"""The container lifecycle commands end to end, as a user types them."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from procs import pids_whose_cmdline

from sandbox import _cgroups

pytestmark = pytest.mark.requires_userns


@pytest.fixture
def ctr(cli, busybox_image):
    """Start detached containers; all are force-removed at the end."""
    made: list[str] = []

    def run(*args: str) -> str:
        r = cli("run", "-d", *args)
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip()
        assert len(cid) == 64
        made.append(cid)
        return cid

    yield run
    if made:
        cli("rm", "-f", "-v", *made)


def test_run_d_ps_and_filters(cli, ctr):
    name = f"psname-{os.getpid()}"
    cid = ctr("--name", name, "-l", "team=qa", "busybox", "sleep", "60")
    r = cli("ps")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if name in ln)
    assert line.startswith(cid[:12]) and "Up " in line and '"sleep 60"' in line
    assert cli("ps", "-q", "--no-trunc", "--filter", f"name={name}").stdout.strip() == cid
    assert cli("ps", "-q", "--filter", "label=team=qa").stdout.split().count(cid[:12]) == 1
    assert cid[:12] not in cli("ps", "-q", "--filter", "label=team=dev").stdout
    fmt = cli("ps", "--filter", f"id={cid}", "--format", "{{.Names}} {{.State}}")
    assert fmt.stdout.strip() == f"{name} running"
    table = cli("ps", "--filter", f"id={cid}", "--format", "table {{.ID}}\\t{{.Names}}")
    assert table.stdout.splitlines()[0].split() == ["CONTAINER", "ID", "NAMES"]
    for bad, why in (("name=(", "invalid filter 'name=(': missing ), unterminated subpattern"),
                     ("status=sleepy", "invalid filter 'status=sleepy': unrecognised status"),
                     ("colour=red", "invalid filter 'colour=red' (filters: status=..."),
                     ("label", "invalid filter 'label' (filters:")):
        r = cli("ps", "--filter", bad)
        assert r.returncode == 125 and r.stderr.startswith(f"sandbox: {why}"), r.stderr
    r = cli("ps", "--filter", f"id={cid}", "--format", "{{.Names}}|{{.Bogus}}")
    assert r.returncode == 125 and "can't evaluate field Bogus" in r.stderr, r.stdout
    r = cli("ps", "--filter", f"id={cid}", "--format", "{{if .Labels}}{{.Labels}}{{end}}")
    assert r.stdout == "team=qa\n", r.stderr
    dup = cli("run", "-d", "--name", name, "busybox", "true")
    assert dup.returncode == 125 and "already in use" in dup.stderr


def test_exec_statuses_env_workdir(cli, ctr):
    cid = ctr("-e", "A=1", "busybox", "sleep", "60")
    r = cli("exec", "-e", "B=2", "-w", "/etc", cid[:8], "sh", "-c", "echo $A$B; pwd")
    assert (r.returncode, r.stdout) == (0, "12\n/etc\n")
    r = cli("exec", "-w", "etc", cid, "pwd")
    assert (r.returncode, r.stderr) == (125, "sandbox: the working directory 'etc' is invalid "
                                             "(it needs to be an absolute path)\n")
    assert cli("exec", cid, "sh", "-c", "exit 9").returncode == 9
    r = cli("exec", cid, "nope")
    assert r.returncode == 127 and "executable file not found" in r.stderr
    assert cli("exec", cid, "/etc").returncode == 126
    r = cli("exec", "-i", cid, "cat", input="through stdin\n")
    assert r.stdout == "through stdin\n"
    assert cli("exec", "no-such-ctr", "true").returncode == 125


@pytest.mark.requires_subuid
def test_exec_user(cli, ctr):
    cid = ctr("busybox", "sleep", "60")
    assert cli("exec", "-u", "app", cid, "id", "-u").stdout == "1000\n"


def test_logs_follow_follows(cli, ctr):
    cid = ctr("busybox", "sh", "-c", "for i in 1 2 3 4; do echo n$i; sleep 0.3; done")
    proc = cli.popen("logs", "-f", cid, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    first = proc.stdout.readline()
    got_first = time.monotonic() - t0
    rest, err = proc.communicate(timeout=20)
    assert first == "n1\n" and rest == "n2\nn3\nn4\n", err
    assert got_first < 0.9  # the first line came before the container ended
    assert cli("logs", "--tail", "2", cid).stdout == "n3\nn4\n"
    stamped = cli("logs", "-t", "--tail", "1", cid).stdout
    assert stamped.endswith(" n4\n") and stamped[:2] == "20"
    assert cli("logs", "--tail", "-1", cid).stdout == "n1\nn2\nn3\nn4\n"  # all, as Docker
    assert cli("logs", "--tail", "0", cid).stdout == ""
    r = cli("logs", "-n", "some", cid)
    assert (r.returncode, r.stderr) == (
        125, "sandbox: invalid value for --tail: 'some' (a number of lines, or all)\n")
    for flag in ("--since", "--until"):
        r = cli("logs", flag, "yesterday", cid)
        assert r.returncode == 125 and r.stderr.startswith(
            f"sandbox: invalid value for {flag}: 'yesterday' (a Unix time, "), r.stderr
    assert cli("logs", "--since", "1h", cid).stdout == "n1\nn2\nn3\nn4\n"


def test_stop_signal_then_kill_after_timeout(cli, ctr):
    cid = ctr("--stop-signal", "USR1", "busybox", "sh", "-c",
              "trap 'echo bye; exit 4' USR1; while true; do sleep 0.05; done")
    time.sleep(0.2)
    assert cli("stop", cid).returncode == 0
    assert cli("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "4"
    assert "bye" in cli("logs", cid).stdout
    cid2 = ctr("busybox", "sh", "-c", "trap '' TERM; while true; do sleep 0.05; done")
    time.sleep(0.2)
    t0 = time.monotonic()
    assert cli("stop", "-t", "1", cid2).returncode == 0
    assert 0.9 < time.monotonic() - t0 < 5
    ps = cli("ps", "-a", "--filter", f"id={cid2}", "--format", "{{.Status}}").stdout
    assert ps.startswith("Exited (137)")


def test_kill_wait_restart(cli, ctr):
    cid = ctr("busybox", "sh", "-c", "trap 'exit 11' INT; while true; do sleep 0.05; done")
    time.sleep(0.2)
    waiter = cli.popen("wait", cid, stdout=subprocess.PIPE)
    assert cli("kill", "-s", "INT", cid).returncode == 0
    assert waiter.communicate(timeout=10)[0] == "11\n"
    assert cli("restart", cid).returncode == 0
    assert cli("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
    assert cli("kill", "nosuch").returncode == 1


def test_pause_unpause_in_ps(cli, ctr):
    cid = ctr("busybox", "sh", "-c", "while true; do date +%s%N > /tmp/t; sleep 0.05; done")
    time.sleep(0.2)
    assert cli("pause", cid).returncode == 0
    assert "(Paused)" in cli("ps", "--filter", f"id={cid}").stdout
    r = cli("exec", cid, "true")
    assert r.returncode == 125 and "paused" in r.stderr
    assert cli("unpause", cid).returncode == 0
    assert cli("exec", cid, "cat", "/tmp/t").returncode == 0


def test_create_start_attach_and_rm(cli, busybox_image):
    r = cli("create", "--name", f"cr-{os.getpid()}", "busybox", "sh", "-c", "echo attached; "
            "echo err >&2; exit 3")
    cid = r.stdout.strip()
    assert cli("ps", "-a", "--filter", f"id={cid}", "--format", "{{.Status}}").stdout == \
        "Created\n"
    r = cli("start", "-a", cid)
    # on failure, say what the engine recorded (a 137 once in CI: killed, or its monitor died?)
    state = cli("inspect", "--format", "{{json .State}}", cid).stdout
    assert r.returncode == 3 and "attached" in r.stdout + r.stderr, (r, state)
    assert cli("rm", cid).returncode == 0
    assert cli("ps", "-a", "-q", "--filter", f"id={cid}").stdout == ""


def test_start_ai_keeps_what_the_command_printed_before_the_attach(cli, busybox_image):
    # the first line is printed at once, before `start` returns and the client connects
    cid = cli("create", "-i", "busybox", "sh", "-c",
              "echo early; cat; echo late >&2").stdout.strip()
    try:
        r = cli("start", "-a", "-i", cid, input="from stdin\n")
        assert (r.returncode, r.stdout, r.stderr) == (0, "early\nfrom stdin\n", "late\n")
    finally:
        cli("rm", "-f", cid)


def test_start_ai_of_a_command_over_before_the_attach(cli, busybox_image):
    cid = cli("create", "-i", "busybox", "sh", "-c", "echo quick; exit 4").stdout.strip()
    try:
        r = cli("start", "-ai", cid, input="")
        assert (r.returncode, r.stdout) == (4, "quick\n"), r.stderr
    finally:
        cli("rm", "-f", cid)


def test_monitored_interactive_run_prints_everything(cli, busybox_image):
    # -p makes the run go through the monitor; -i attaches to it after the start
    r = cli("run", "--rm", "-i", "-p", "127.0.0.1::7000", "busybox", "sh", "-c",
            "echo one; cat; echo three", input="two\n")
    assert (r.returncode, r.stdout) == (0, "one\ntwo\nthree\n"), r.stderr


def test_attach_with_stdin(cli, busybox_image):
    cid = cli("run", "-d", "-i", "busybox", "cat").stdout.strip()
    try:
        proc = cli.popen("attach", cid, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        out, err = proc.communicate("echoed back\n", timeout=20)
        assert out == "echoed back\n", err
        assert proc.returncode == 0
    finally:
        cli("rm", "-f", cid)


def test_rm_refuses_running_and_force_removes(cli, ctr):
    cid = ctr("busybox", "sleep", "60")
    r = cli("rm", cid)
    assert r.returncode == 1 and "rm -f" in r.stderr
    assert cli("rm", "-f", cid).returncode == 0
    assert cli("ps", "-a", "-q", "--filter", f"id={cid}").stdout == ""


def test_inspect_format_and_port(cli, ctr):
    cid = ctr("-p", "127.0.0.1::8080", "busybox", "sh", "-c",
              "mkdir /w; echo ok > /w/i; exec httpd -f -p 8080 -h /w")
    port = json.loads(cli("inspect", cid).stdout)[0]["NetworkSettings"]["Ports"]["8080/tcp"][
        0]["HostPort"]
    assert cli("port", cid).stdout == f"8080/tcp -> 127.0.0.1:{port}\n"
    assert cli("port", cid, "8080").stdout == f"127.0.0.1:{port}\n"
    assert cli("inspect", "-f", "{{.State.Status}} {{.HostConfig.NetworkMode}}",
               cid).stdout == "running none\n"
    for _ in range(50):
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as s:
                s.sendall(b"GET /i HTTP/1.0\r\n\r\n")
                data = s.makefile("rb").read()
            break
        except OSError:
            time.sleep(0.05)
    assert data.endswith(b"ok\n")


def test_cp_diff_commit_export(cli, ctr, tmp_path: Path):
    cid = ctr("busybox", "sh", "-c", "echo one > /one; rm /etc/group; sleep 60")
    time.sleep(0.3)
    assert cli("diff", cid).stdout.splitlines() == ["C /etc", "D /etc/group", "A /one"]
    assert cli("cp", f"{cid}:/one", str(tmp_path)).returncode == 0
    assert (tmp_path / "one").read_text() == "one\n"
    (tmp_path / "two").write_text("two\n")
    assert cli("cp", str(tmp_path / "two"), f"{cid}:/two").returncode == 0
    tag = f"cli-commit-{os.getpid()}"
    for bad in ("CMD [", "CMD [1]", "ENTRYPOINT [\"a\", 2]"):
        r = cli("commit", "-c", bad, cid, tag)
        assert r.returncode == 125 and r.stderr.startswith(
            f"sandbox: invalid --change '{bad}': not a JSON array of strings"), r.stderr
    r = cli("commit", "-m", "msg", "-c", "CMD [\"cat\", \"/two\"]", cid, tag)
    assert r.returncode == 0 and r.stdout.startswith("sha256:")
    r = cli("run", "--rm", tag)
    assert r.stdout == "two\n", r.stderr
    out = tmp_path / "fs.tar"
    assert cli("export", "-o", str(out), cid).returncode == 0
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "one" in names and "two" in names and "etc/group" not in names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fs.tar")] == ["fs.tar"]
    r = cli("export", "-o", str(tmp_path / "missing" / "fs.tar"), cid)
    assert (r.returncode, r.stderr) == (
        125, f"sandbox: cannot write {tmp_path / 'missing' / 'fs.tar'}: No such file or "
             "directory\n")
    raw = subprocess.run([sys.executable, "-m", "sandbox", "cp", f"{cid}:/one", "-"],
                         capture_output=True, env=cli.env, check=False)
    assert tarfile.open(fileobj=io.BytesIO(raw.stdout)).getnames() == ["one"]
    assert cli("rmi", tag).returncode == 0


def test_volumes_cli(cli, busybox_image):
    name = f"clivol-{os.getpid()}"
    assert cli("volume", "create", name).stdout == f"{name}\n"
    r = cli("run", "--rm", "-v", f"{name}:/v", "busybox", "sh", "-c", "echo persisted > /v/f")
    assert r.returncode == 0, r.stderr
    r = cli("run", "--rm", "--mount", f"type=volume,source={name},target=/w", "busybox",
            "cat", "/w/f")
    assert r.stdout == "persisted\n", r.stderr
    assert name in cli("volume", "ls", "-q").stdout.split()
    data = json.loads(cli("volume", "inspect", name).stdout)[0]
    assert data["Name"] == name and data["Driver"] == "local"
    assert cli("volume", "rm", name).stdout == f"{name}\n"
    assert name not in cli("volume", "ls", "-q").stdout.split()


def test_tmpfs_mount_readonly_root(cli, busybox_image):
    r = cli("run", "--rm", "--read-only", "--mount", "type=tmpfs,target=/scratch", "busybox",
            "sh", "-c", "echo x > /scratch/f && cat /scratch/f; touch /nope || echo ro")
    assert r.stdout == "x\nro\n", r.stderr


def test_hosts_dns_ulimit_and_limit_warnings(cli, busybox_image):
    r = cli("run", "--rm", "--add-host", "db.local:10.1.2.3", "--dns", "9.9.9.9",
            "--ulimit", "nofile=512:512", "--memory", "64m", "--pids-limit", "50", "--init",
            "busybox", "sh", "-c", "grep db.local /etc/hosts; cat /etc/resolv.conf; ulimit -n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["10.1.2.3\tdb.local", "nameserver 9.9.9.9", "512"]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING")]
    expected = [f"WARNING: {flag} is not enforced: {why}" for flag, why in (
        ("--memory", _cgroups.reason(controller="memory")),
        ("--pids-limit", _cgroups.reason(controller="pids"))) if why]
    assert warnings == expected


def test_limits_are_enforced_or_warned_about(cli, busybox_image):
    """On a host with a delegated cgroup v2 tree the container sees its limits in its own
    cgroup (and a fork bomb stops at pids.max); elsewhere each flag says why it is not."""
    r = cli("run", "--rm", "--memory", "64m", "--cpus", "1.5", "--pids-limit", "20",
            "busybox", "sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max "
            "/sys/fs/cgroup/pids.max 2>/dev/null; "
            "for i in $(seq 40); do sleep 5 & done 2>/dev/null; echo started")
    assert r.returncode == 0, r.stderr
    reasons = {c: _cgroups.reason(controller=c) for c in ("memory", "cpu", "pids")}
    for flag, controller in (("--memory", "memory"), ("--cpus", "cpu"), ("--pids-limit", "pids")):
        warned = f"WARNING: {flag} is not enforced: {reasons[controller]}" in r.stderr
        assert warned == bool(reasons[controller]), r.stderr
    if not any(reasons.values()):
        assert r.stdout.splitlines()[:3] == ["67108864", "150000 100000", "20"]
        assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr


def test_foreground_run_with_published_port(cli, busybox_image):
    proc = cli.popen("run", "--rm", "-p", "127.0.0.1::7000", "busybox", "sh", "-c",
                     "echo started; sleep 0.5; echo done", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out == "started\ndone\n", err


def test_container_prune_and_top_stats(cli, ctr, busybox_image):
    cid = ctr("busybox", "sleep", "60")
    assert "sleep 60" in cli("top", cid).stdout
    stats = cli("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", cid).stdout
    assert stats.split()[1] == "2"  # sandbox's init and the command
    dead = cli("run", "-d", "busybox", "true").stdout.strip()
    assert cli("wait", dead).stdout == "0\n"
    r = cli("container", "prune", "-f")
    assert dead in r.stdout and cid not in r.stdout


def _processes_with(argv_prefix: str) -> list[int]:
    return pids_whose_cmdline(lambda cmd: cmd.startswith(argv_prefix.encode()))


@pytest.mark.slow
def test_sigkill_of_the_cli_at_random_moments_leaves_nothing_stale(cli, busybox_image):
    marker = f"{random.randint(100000, 999999)}.5"
    rng = random.Random(os.getpid())
    try:
        for i in range(6):
            args = ["run", "-d"] if i % 2 == 0 else ["run"]
            proc = cli.popen(*args, "--label", f"marker={marker}", "busybox", "sleep", marker,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        time.sleep(0.5)
        ps = cli("ps", "-a", "--no-trunc", "--filter", f"label=marker={marker}", "--format",
                 "{{.ID}} {{.State}}")
        states = dict(ln.split() for ln in ps.stdout.splitlines())
        running = [c for c, s in states.items() if s == "running"]
        # ps tells the truth: a container it calls running has its command alive, else none
        procs = _processes_with(f"sleep\0{marker}")
        assert len(procs) == len(running), (states, procs)
        if states:
            assert cli("rm", "-f", *states).returncode == 0
        deadline = time.monotonic() + 5
        while _processes_with(f"sleep\0{marker}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with(f"sleep\0{marker}") == []
        with open("/proc/self/mountinfo") as f:
            mounts = f.read()
        for cid in states:
            assert cid not in mounts
        assert cli("ps", "-a", "-q", "--filter", f"label=marker={marker}").stdout == ""
    finally:
        left = cli("ps", "-a", "-q", "--filter", f"label=marker={marker}").stdout.split()
        if left:
            cli("rm", "-f", *left)


def test_monitor_sigkill_then_ps_and_rm(cli, ctr, session_store: Path):
    cid = ctr("busybox", "sleep", "60")
    state = json.loads((session_store / "containers" / cid / "state.json").read_text())
    os.kill(state["monitor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{state['pid']}") and time.monotonic() < deadline:
        time.sleep(0.05)
    st = cli("ps", "-a", "--filter", f"id={cid}", "--format", "{{.Status}}").stdout
    assert st.startswith("Exited (137)")
    assert cli("rm", cid).returncode == 0
