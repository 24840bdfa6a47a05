"""Isolation properties of ``sandbox run``, each test named after the property it proves.

Run as an unprivileged user, through the CLI as a user would (end to end).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from procs import in_child, pids_whose_cmdline, processes_with

from sandbox.runtime.idmap import detect_mapping

pytestmark = pytest.mark.requires_userns


def test_uid0_inside_is_the_user_outside(cli, busybox_image, host_dir: Path):
    r = cli("run", "--rm", "-v", f"{host_dir}:/out", busybox_image,
            "sh", "-c", "id -u; touch /out/made-inside")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
    st = os.stat(host_dir / "made-inside")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.requires_subuid
def test_chown_inside_lands_in_the_subuid_range(cli, busybox_image, host_dir: Path):
    mapping = detect_mapping()
    r = cli("run", "--rm", "-v", f"{host_dir}:/out", busybox_image,
            "sh", "-c", "touch /out/f && chown 1000:1000 /out/f && stat -c %u:%g /out/f")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1000:1000"
    uid_range, gid_range = mapping.uid_map[1], mapping.gid_map[1]
    st = os.stat(host_dir / "f")
    assert st.st_uid == uid_range.host_id + 999
    assert st.st_gid == gid_range.host_id + 999


@pytest.mark.requires_subuid
def test_user_flag_switches_to_a_mapped_user_with_groups(cli, busybox_image):
    r = cli("run", "--rm", "-u", "app", busybox_image, "id")
    assert r.returncode == 0, r.stderr
    assert "uid=1000(app) gid=1000(app)" in r.stdout
    assert "2000(extra)" in r.stdout
    r = cli("run", "--rm", "-u", "33:2000", busybox_image, "id")
    assert "uid=33(www-data) gid=2000(extra)" in r.stdout, r.stdout + r.stderr


def test_single_uid_mode_maps_only_root_and_denies_setgroups(cli, busybox_image,
                                                             host_dir: Path):
    env = {"SANDBOX_USERNS": "single"}
    r = cli("run", "--rm", "-v", f"{host_dir}:/out", busybox_image, "sh", "-c",
            "cat /proc/self/uid_map /proc/self/setgroups; touch /out/f; "
            "chown 1000 /out/f || echo chown-refused", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].split() == ["0", str(os.getuid()), "1"]
    assert "deny" in r.stdout
    assert "chown-refused" in r.stdout
    r = cli("run", "--rm", "-u", "1000", busybox_image, "true", env=env)
    assert r.returncode == 125
    assert "not mapped" in r.stderr


@pytest.mark.requires_subuid
def test_a_user_beyond_the_subuid_ranges_is_refused_naming_the_mapped_ids(cli, busybox_image):
    """With subuid ranges, ``-u`` past their size fails as the single-uid case does, but the
    message gives the ids the ranges map (not single-uid mode's advice to add ranges)."""
    r = cli("run", "--rm", busybox_image, "cat", "/proc/self/uid_map")
    top = max(int(row.split()[0]) + int(row.split()[2]) - 1 for row in r.stdout.splitlines())
    r = cli("run", "--rm", "-u", str(top + 1), busybox_image, "true")
    assert r.returncode == 125
    assert r.stderr.strip() == (
        f"sandbox: user {top + 1}:0 is not mapped in this container (it has uids 0-{top} and "
        f"gids 0-{top}: the size of the ranges in /etc/subuid and /etc/subgid)"), r.stderr
    assert cli("run", "--rm", "-u", str(top), busybox_image, "true").returncode == 0


def test_writes_to_root_stay_in_the_container_layer(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "sh", "-c",
            "echo x > /etc/x && rm /bin/ls && cat /etc/x")
    assert r.returncode == 0 and r.stdout == "x\n", r.stderr
    r = cli("run", "--rm", busybox_image, "sh", "-c", "test ! -e /etc/x && test -e /bin/ls")
    assert r.returncode == 0, r.stderr


def test_host_image_root_is_writable_and_host_untouched(cli):
    marker = f"/etc/sandbox-test-{os.getpid()}"
    r = cli("run", "--rm", "host", "sh", "-c", f"echo x > {marker} && cat {marker}")
    assert r.returncode == 0 and r.stdout == "x\n", r.stderr
    assert not os.path.exists(marker)


def test_rm_leaves_no_container_behind(cli, busybox_image, session_store: Path):
    before = set(os.listdir(session_store / "containers"))
    r = cli("run", "--rm", busybox_image, "sh", "-c", "touch /a; mkdir -p /b/c")
    assert r.returncode == 0
    assert set(os.listdir(session_store / "containers")) == before


def test_run_returns_the_commands_status_and_leaves_nothing_running(cli, busybox_image,
                                                                    session_store: Path):
    """The CLI returns once PID 1 reports the status (PID 1's own exit, the kernel tearing the
    namespaces down, goes on after it); what the command left in the background is killed."""
    seconds = f"{1000 + os.getpid() % 1000}.25"

    def left() -> list[int]:
        return pids_whose_cmdline(lambda cmd: cmd == f"sleep\0{seconds}\0".encode())

    before = set(os.listdir(session_store / "containers"))
    r = cli("run", "--rm", busybox_image, "sh", "-c", f"sleep {seconds} & echo started; exit 3")
    assert r.returncode == 3 and r.stdout == "started\n", r.stderr
    assert set(os.listdir(session_store / "containers")) == before
    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert left() == []


def test_pid1_is_our_init_and_reaps_zombies(cli, busybox_image):
    script = ("(sleep 0.2 &) ; sleep 0.6; "
              "cat /proc/1/cmdline | tr '\\0' ' '; echo; "
              "ps -o stat,comm | grep -c '^Z' || true")
    r = cli("run", "--rm", busybox_image, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    first, zombies = r.stdout.strip().split("\n")[-2:]
    assert "sandbox" in first
    assert zombies.strip() == "0"


def test_signal_to_sandbox_run_reaches_the_command(cli, busybox_image):
    proc = cli.popen("run", "--rm", busybox_image, "sh", "-c",
                     'trap "echo got-term; exit 3" TERM; echo ready; '
                     "while true; do sleep 0.05; done",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert "got-term" in out, err
    assert proc.returncode == 3


def test_ctrl_c_stops_the_container_and_cleans_up(cli, busybox_image, session_store: Path):
    before = set(os.listdir(session_store / "containers"))
    proc = cli.popen("run", "--rm", busybox_image, "sh", "-c", "echo ready; sleep 30",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert set(os.listdir(session_store / "containers")) == before


def test_ps_shows_only_the_containers_processes(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "ps", "-o", "pid")
    assert r.returncode == 0, r.stderr
    pids = [int(x) for x in r.stdout.split()[1:]]
    assert max(pids) < 10 and 1 in pids


def test_hostname_is_private(cli, busybox_image):
    r = cli("run", "--rm", "--hostname", "inner", busybox_image, "sh", "-c",
            "hostname; cat /etc/hostname; hostname changed 2>/dev/null || echo refused")
    # Docker's default capabilities lack CAP_SYS_ADMIN: the name is set for, not by, the command
    assert r.stdout.split() == ["inner", "inner", "refused"], r.stderr
    assert socket.gethostname() != "inner"
    r = cli("run", "--rm", busybox_image, "hostname")
    assert r.stdout.strip() != socket.gethostname() and len(r.stdout.strip()) == 12


def test_network_none_has_only_loopback(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "sh", "-c", "ls /sys/class/net; ip -o link")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "lo"
    assert "state UNKNOWN" in r.stdout or "UP" in r.stdout


def test_network_host_sees_the_hosts_interfaces(cli, busybox_image):
    r = cli("run", "--rm", "--network", "host", busybox_image, "ls", "/sys/class/net")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(os.listdir("/sys/class/net"))


def test_masked_paths_are_masked(cli, busybox_image):
    from sandbox.runtime.plan import MASKED_PATHS

    present = [p for p in MASKED_PATHS if os.path.exists(p)]
    assert present, "no masked path exists on this host: nothing to check"
    script = "; ".join(
        f"if [ -d {p} ]; then echo {p} $(ls -A {p} | wc -l); "
        f"else echo {p} $(cat {p} 2>/dev/null | wc -c); fi" for p in present)
    r = cli("run", "--rm", busybox_image, "sh", "-c",
            script + "; echo 1 > /proc/sys/kernel/panic || echo ro-sys; "
            "echo b > /proc/sysrq-trigger || echo ro-sysrq")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    sizes = dict(line.split() for line in lines[:len(present)])
    assert sizes == {p: "0" for p in present}
    assert "ro-sys" in lines and "ro-sysrq" in lines


def test_mounting_host_proc_or_remounting_root_rw_fails(cli, busybox_image):
    r = cli("run", "--rm", "--read-only", busybox_image, "sh", "-c",
            "mkdir -p /tmp/p 2>/dev/null; mount -t proc proc /dev/shm && echo mounted-proc; "
            "mount -o remount,rw / && echo remounted; touch /x || echo ro-root")
    assert "mounted-proc" not in r.stdout and "remounted" not in r.stdout
    assert "ro-root" in r.stdout


def test_capabilities_are_dockers_default_set_and_no_new_privs(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "grep", "-E", "CapBnd|CapEff|NoNewPrivs",
            "/proc/self/status")
    fields = dict(line.split(":\t") for line in r.stdout.strip().split("\n"))
    assert fields["CapBnd"] == "00000000a80425fb"
    assert fields["CapEff"] == "00000000a80425fb"
    assert fields["NoNewPrivs"] == "1"


def test_dev_has_the_standard_nodes_and_a_private_devpts(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "sh", "-c",
            "ls /dev; echo hi > /dev/null && head -c 4 /dev/zero | wc -c; "
            "ls /dev/pts; test -L /dev/ptmx && echo ptmx-link; "
            "readlink /dev/fd; cat /proc/mounts | grep -c devpts")
    assert r.returncode == 0, r.stderr
    names = set(r.stdout.split())
    for node in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
                 "fd", "stdin", "stdout", "stderr", "ptmx"):
        assert node in names, node
    assert "ptmx-link" in names and "/proc/self/fd" in names


def test_etc_files_are_provided(cli, busybox_image):
    r = cli("run", "--rm", "--hostname", "box", busybox_image, "sh", "-c",
            "grep -c localhost /etc/hosts; cat /etc/hostname; test -f /etc/resolv.conf")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "box"]


def test_environment_from_image_flags_and_env_file(cli, busybox_image, tmp_path: Path):
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\nOVER=file\n")
    r = cli("run", "--rm", "--env-file", str(env_file), "-e", "OVER=flag", "-e", "PASSED",
            "-w", "/tmp/work", busybox_image, "sh", "-c",
            "echo $PATH; echo $FROM_FILE $OVER $PASSED; pwd; echo $HOME",
            env={"PASSED": "through"})
    assert r.returncode == 0, r.stderr
    path, values, cwd, home = r.stdout.strip().split("\n")
    assert path.startswith("/usr/local/sbin")
    assert values == "yes flag through"
    assert cwd == "/tmp/work" and home == "/root"


def test_stdin_is_passed_with_i_and_closed_without(cli, busybox_image):
    r = cli("run", "--rm", "-i", busybox_image, "cat", input="hello\n")
    assert r.stdout == "hello\n"
    r = cli("run", "--rm", busybox_image, "cat", input="hello\n")
    assert r.stdout == ""


def test_tty_gives_the_command_a_pty(sandbox_env, busybox_image):
    import pty
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.execvpe(sys.executable, [sys.executable, "-m", "sandbox", "run", "--rm", "-t",
                                    busybox_image, "sh", "-c",
                                    "tty; stty size; awk '{print \"tty_nr=\" $7}' /proc/self/stat"],
                   sandbox_env)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"/dev/pts/0" in out
    assert b"tty_nr=" in out and b"tty_nr=0\r" not in out  # the pty is its controlling terminal


@pytest.mark.parametrize(("command", "status"), [
    (["sh", "-c", "exit 3"], 3),
    (["sh", "-c", "kill -9 $$"], 137),
    (["sh", "-c", "kill -15 $$"], 143),
    (["true"], 0),
])
def test_exit_status_is_the_commands(cli, busybox_image, command, status):
    assert cli("run", "--rm", busybox_image, *command).returncode == status


def test_command_not_found_is_127(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "no-such-command")
    assert r.returncode == 127
    assert r.stderr.strip() == ('sandbox: exec: "no-such-command": executable file not found '
                                "in $PATH")


def test_command_not_executable_is_126(cli, busybox_image):
    r = cli("run", "--rm", busybox_image, "/etc/passwd")
    assert r.returncode == 126
    assert "permission denied" in r.stderr and len(r.stderr.strip().split("\n")) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["no-such-image:1"], "unable to find image"),
    (["-u", "nobody-here", "@IMAGE", "true"], "unable to find user nobody-here"),
    (["-e", "=bad", "@IMAGE", "true"], "invalid environment variable"),
    (["--no-such-flag", "@IMAGE"], "unknown flag: --no-such-flag"),
    (["--network", "bridge", "@IMAGE", "true"], "bridge"),
    (["-w", "relative", "@IMAGE", "true"], "needs to be an absolute path"),
    (["--memory", "10q", "@IMAGE", "true"], "invalid --memory value '10q' (a size such as"),
    (["--cpus", "-1", "@IMAGE", "true"], "invalid --cpus value '-1'"),
    (["--cpus", "many", "@IMAGE", "true"], "invalid --cpus value 'many'"),
    (["--cpus", "1e999", "@IMAGE", "true"], "invalid --cpus value '1e999'"),
    (["--memory", "1e999g", "@IMAGE", "true"], "invalid --memory value '1e999g'"),
    (["--pids-limit", "x", "@IMAGE", "true"], "invalid --pids-limit value 'x'"),
    (["--log-opt", "max-size=x", "@IMAGE", "true"], "invalid --log-opt max-size value 'x'"),
    (["--log-opt", "max-file=0", "@IMAGE", "true"], "invalid --log-opt max-file value '0'"),
    (["--log-opt", "colour=red", "@IMAGE", "true"],
     "unknown log opt 'colour' for json-file log driver"),
    (["--ulimit", "nofile=10:5", "@IMAGE", "true"], "the soft limit is above the hard one"),
    (["--add-host", "bad", "@IMAGE", "true"], "invalid --add-host 'bad'"),
    (["--add-host", "db:not-an-ip", "@IMAGE", "true"], "invalid --add-host 'db:not-an-ip'"),
    (["--dns", "bogus", "@IMAGE", "true"], "invalid --dns 'bogus': not an IP address"),
    (["--expose", "abc", "@IMAGE", "true"], "invalid --expose 'abc'"),
    (["--restart", "always", "@IMAGE", "true"], "conflicting options: --restart and --rm"),
    (["-l", "=x", "@IMAGE", "true"], "invalid label '=x'"),
])
def test_engine_errors_are_one_line_and_125(cli, busybox_image, session_store, args, message):
    before = set(os.listdir(session_store / "containers"))
    token = f"h{os.getpid()}x{time.monotonic_ns()}"  # in the command line of every process
    r = cli("run", "--rm", "--hostname", token,
            *[busybox_image if a == "@IMAGE" else a for a in args])
    assert r.returncode == 125, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().split("\n")) == 1 and "Traceback" not in r.stderr
    assert set(os.listdir(session_store / "containers")) == before
    # the container's first process, forked before the error was found, is gone too
    assert processes_with(token) == []


def test_a_restart_policy_with_a_count_that_is_not_one_is_refused(cli, busybox_image,
                                                                  session_store):
    before = set(os.listdir(session_store / "containers"))
    for policy in ("on-failure:x", "always:3", "sometimes"):
        r = cli("run", "-d", "--restart", policy, busybox_image, "true")
        assert (r.returncode, r.stderr.splitlines()[0]) == (
            125, f"sandbox: invalid restart policy '{policy}' (use no, on-failure[:N] (N a "
                 "number), always or unless-stopped)"), r.stderr
    assert set(os.listdir(session_store / "containers")) == before


def test_run_without_rm_keeps_an_exited_container(cli, busybox_image, session_store: Path):
    before = set(os.listdir(session_store / "containers"))
    r = cli("run", "--name", f"kept-{os.getpid()}", busybox_image, "sh", "-c", "exit 4")
    assert r.returncode == 4
    new = set(os.listdir(session_store / "containers")) - before
    assert len(new) == 1
    import json

    state = json.loads((session_store / "containers" / new.pop() / "state.json").read_text())
    assert state["status"] == "exited" and state["exit_code"] == 4


def _slirp_problem() -> str | None:
    import shutil

    if shutil.which("slirp4netns") is None:
        return "slirp4netns is not installed"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is not usable by this user"
    return None


def test_network_slirp4netns_gives_a_user_mode_network(cli, busybox_image):
    if _slirp_problem():
        pytest.skip(_slirp_problem())
    # 10.0.2.2 is slirp4netns's own virtual gateway: nothing leaves this machine
    r = cli("run", "--rm", "--network", "slirp4netns", busybox_image, "sh", "-c",
            "ip -o -4 addr show tap0; cat /etc/resolv.conf; ping -c1 -W2 10.0.2.2 >/dev/null "
            "&& echo gateway-answers")
    assert r.returncode == 0, r.stderr
    assert "inet 10.0.2.100/24" in r.stdout
    assert "nameserver 10.0.2.3" in r.stdout
    assert "gateway-answers" in r.stdout
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_our_slirp(p)]


def _is_our_slirp(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        is_slirp = cmd.startswith(b"slirp4netns\0") or b"/slirp4netns\0" in cmd
        return is_slirp and os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


@pytest.mark.requires_subuid
def test_a_failing_newuidmap_is_one_line_and_leaves_nothing(cli, busybox_image, tmp_path: Path,
                                                            session_store: Path):
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("newuidmap", "newgidmap"):
        (fake / tool).write_text("#!/bin/sh\necho \"$0: write to uid_map failed\" >&2\nexit 1\n")
        (fake / tool).chmod(0o755)
    before = set(os.listdir(session_store / "containers"))
    r = cli("run", "--rm", busybox_image, "true",
            env={"PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    assert r.returncode == 125
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("sandbox:")]
    assert ours and ours[0].startswith("sandbox: cannot write the uid/gid maps"), r.stderr
    assert "Traceback" not in r.stderr
    assert set(os.listdir(session_store / "containers")) <= before


def _no_child_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.mark.requires_subuid
def test_entering_a_mapped_user_namespace_leaves_no_child():
    """``enter_user_namespace`` with subuid ranges: a cloned child holds the namespace, the map
    tools map it from outside, we join it; once ``reap_maker`` has run, no child is left."""
    mapping = detect_mapping()

    def check() -> str:
        from sandbox.runtime import userns

        userns.enter_user_namespace(mapping)
        return _reaped_uid_map()

    assert in_child(check) == _uid_map_text(mapping)


def _reaped_uid_map() -> str:
    """After ``enter_user_namespace``, in the child: the holder reaped, no child left, and the
    uid map we now have."""
    from sandbox.runtime import userns

    userns.reap_maker()
    assert _no_child_left()
    with open("/proc/self/uid_map") as f:
        return " ".join(f.read().split())


def _uid_map_text(mapping) -> str:
    return " ".join(f"{m.container_id} {m.host_id} {m.size}" for m in mapping.uid_map)


def test_a_namespace_holder_is_cloned_into_its_own_user_namespace_and_reaped():
    """``clone_holder``: a child in a new user namespace that only sleeps, until killed."""
    def check() -> str:
        from sandbox import _syscalls as sc

        pid, _stack = sc.clone_holder(sc.CLONE_NEWUSER, 60)
        theirs = os.readlink(f"/proc/{pid}/ns/user")
        assert theirs != os.readlink("/proc/self/ns/user")
        time.sleep(0.05)
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert _no_child_left()
        return state

    assert in_child(check) == "S"  # asleep


def test_a_namespace_holder_ends_by_itself_when_its_time_is_up():
    """A holder is a bare libc sleep with no parent-death signal: should its creator be killed
    before killing it, it ends on its own after ``seconds``."""
    def check() -> str:
        from sandbox import _syscalls as sc

        start = time.monotonic()
        pid, _stack = sc.clone_holder(sc.CLONE_NEWUSER, 1)
        _, status = os.waitpid(pid, 0)
        took = time.monotonic() - start
        assert os.WIFEXITED(status) and 0.9 < took < 10, (status, took)
        return "ok"

    assert in_child(check) == "ok"


@pytest.mark.requires_subuid
def test_a_prepared_user_namespace_is_the_one_entered():
    """``prepare_user_namespace`` starts the map tools early; ``enter_user_namespace`` joins
    the namespace they mapped, and no process of it is left once ``reap_maker`` has run."""
    def check() -> str:
        from sandbox.runtime import userns

        mapping = detect_mapping()
        userns.prepare_user_namespace(mapping)
        holder = userns._PREPARED
        assert holder is not None
        assert [t for t, _ in holder.started] == [mapping.newuidmap]  # one tool at a time
        assert [argv[0] for argv in holder.pending] == [mapping.newgidmap]
        userns.advance_prepared()
        assert len(holder.started) == 2 and not holder.pending
        userns.enter_user_namespace(mapping)
        assert userns._PREPARED is None
        assert os.readlink("/proc/self/ns/user") == os.readlink(f"/proc/{holder.pid}/ns/user")
        return _reaped_uid_map()

    assert in_child(check) == _uid_map_text(detect_mapping())


@pytest.mark.requires_subuid
def test_a_prepared_holder_that_has_ended_is_replaced():
    """A prepared namespace whose holder has ended by the time it is entered (its time ran
    out) is discarded, and a fresh one is made and mapped."""
    def check() -> str:
        from sandbox.runtime import userns

        mapping = detect_mapping()
        userns.prepare_user_namespace(mapping)
        old = userns._PREPARED
        assert old is not None
        os.kill(old.pid, signal.SIGKILL)
        os.waitid(os.P_PID, old.pid, os.WEXITED | os.WNOWAIT)
        before = os.readlink("/proc/self/ns/user")
        userns.enter_user_namespace(mapping)
        assert os.readlink("/proc/self/ns/user") != before  # entered a fresh one
        assert not os.path.exists(f"/proc/{old.pid}")  # the old holder reaped with its tools
        return _reaped_uid_map()

    assert in_child(check) == _uid_map_text(detect_mapping())


@pytest.mark.requires_subuid
def test_a_prepared_user_namespace_left_unused_leaves_no_process():
    def check() -> str:
        from sandbox.runtime import userns

        userns.prepare_user_namespace(detect_mapping())
        holder = userns._PREPARED
        assert holder is not None and holder.started
        userns.cancel_prepared()
        assert userns._PREPARED is None and _no_child_left()
        for pid in (holder.pid, *(p for _, p in holder.started)):
            assert not os.path.exists(f"/proc/{pid}")
        userns.cancel_prepared()  # twice is harmless
        return "ok"

    assert in_child(check) == "ok"


@pytest.mark.requires_subuid
@pytest.mark.parametrize("broken", ["newuidmap fails", "newgidmap missing"])
def test_prepared_map_tools_that_fail_leave_us_outside_with_no_process(tmp_path: Path,
                                                                       broken: str):
    from sandbox.runtime.idmap import IdMapping

    real = detect_mapping()
    fail = tmp_path / "fail"
    fail.write_text("#!/bin/sh\nexit 1\n")
    fail.chmod(0o755)
    missing = tmp_path / "missing"
    if broken == "newuidmap fails":
        tools, expected = (str(fail), real.newgidmap), "fail "
    else:
        tools, expected = (real.newuidmap, str(missing)), f"{missing}: No such file"
    mapping = IdMapping(real.mode, real.uid_map, real.gid_map, real.reason, *tools)

    def check() -> str:
        from sandbox.errors import UserNamespaceUnavailable
        from sandbox.runtime import userns

        before = os.readlink("/proc/self/ns/user")
        userns.prepare_user_namespace(mapping)
        userns.advance_prepared()  # cannot start a missing tool: enter meets it again
        with pytest.raises(UserNamespaceUnavailable) as exc:
            userns.enter_user_namespace(mapping)
        assert os.readlink("/proc/self/ns/user") == before
        assert userns._INSIDE is None and userns._PREPARED is None
        assert _no_child_left()
        return str(exc.value)

    assert in_child(check).startswith(f"cannot write the uid/gid maps: {expected}")


def test_mounts_make_the_targets_the_image_lacks(cli, busybox_image, tmp_path):
    """A bind or tmpfs whose target is not in the image gets it made (a directory or a file as
    the source is, parents too), as Docker does; the image's own targets are used as they are."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "in-dir").write_text("dir\n")
    (tmp_path / "f").write_text("file\n")
    r = cli("run", "--rm", "-v", f"{tmp_path / 'd'}:/new/deep/dir:ro",
            "-v", f"{tmp_path / 'f'}:/also/new/file", "--tmpfs", "/scratch/t",
            busybox_image, "sh", "-c",
            "cat /new/deep/dir/in-dir /also/new/file; [ -f /also/new/file ] && echo is-file; "
            "grep -c ' /scratch/t tmpfs ' /proc/mounts; touch /new/deep/dir/x || echo ro")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == ["dir", "file", "is-file", "1", "ro"]
