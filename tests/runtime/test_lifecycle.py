"""Detached containers through the Python API (``sandbox.lifecycle``), as the pytest plugin
uses it: start, exec, logs, stop, pause, remove, and what survives a SIGKILLed monitor."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from procs import in_child

from sandbox import _cstate as cs
from sandbox import lifecycle as lc
from sandbox.containers import RunOptions, _link_cid, _name_link
from sandbox.errors import SandboxError

pytestmark = pytest.mark.requires_userns

LOOP = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; "
        "sleep 0.05; done")


def run_d(engine, cmd, **kw) -> lc.ContainerState:
    host = kw.pop("host", None)
    s = lc.run_detached(engine, "busybox", cmd, RunOptions(**kw), host)
    engine.made.append(s.id)
    return s


def no_processes_left(init_pid: int, start: int) -> bool:
    return not cs.alive(init_pid, start)


def test_run_detached_returns_running_state_with_host_pids(engine):
    s = run_d(engine, ["sleep", "30"], name=f"det-{os.getpid()}")
    assert s.status == "running" and s.exit_code is None
    assert s.init_pid > 0 and s.pid > 0 and s.pid != s.init_pid
    with open(f"/proc/{s.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sleep"
    assert lc.state(engine, s.name).id == s.id
    assert s.id in [c.id for c in lc.list_containers(engine)]


def test_containers_share_the_overlay_mount_point_each_in_its_own_namespace(engine):
    """Kernel overlayfs mounts every container's root at the store's ``mnt/``, each in the
    container's own mount namespace: two running at once see their own files, the host sees
    an empty directory, and no container directory holds a ``rootfs/``."""
    a = run_d(engine, ["sh", "-c", "echo a > /mine; exec sleep 30"])
    b = run_d(engine, ["sh", "-c", "echo b > /mine; exec sleep 30"])
    if engine.load_config(a.id)["spec"]["rootfs"]["driver"] != "overlay":
        pytest.skip("the kernel overlay driver is not in use")
    time.sleep(0.1)
    assert lc.exec_run(engine, a.id, ["cat", "/mine"]).stdout == b"a\n"
    assert lc.exec_run(engine, b.id, ["cat", "/mine"]).stdout == b"b\n"
    mnt = engine.store.path("mnt")
    assert os.listdir(mnt) == [] and not os.path.ismount(mnt)
    for s in (a, b):
        cdir = engine.store.container_dir(s.id)
        assert engine.load_config(s.id)["spec"]["rootfs"]["mountpoint"] == mnt
        assert not os.path.exists(os.path.join(cdir, "rootfs"))


def test_exec_sees_the_same_processes_files_and_hostname(engine):
    s = run_d(engine, ["sh", "-c", "echo marker > /tmp/m; exec sleep 30"], hostname="boxy")
    time.sleep(0.1)
    r = lc.exec_run(engine, s.id, ["sh", "-c", "cat /tmp/m; hostname; ps -o pid,args"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "marker" and lines[1] == "boxy"
    assert any(ln.split(None, 1)[1:] == ["sleep 30"] for ln in lines[2:])
    assert os.readlink(f"/proc/{s.init_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_exec_joins_a_host_network_container(engine):
    s = run_d(engine, ["sleep", "30"], network="host")
    r = lc.exec_run(engine, s.id, ["ls", "/sys/class/net"])
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().split()) == sorted(os.listdir("/sys/class/net"))


@pytest.fixture(params=["own", "zygote"])
def helpers(request):
    """Helpers (monitor, exec) started by this process itself (a fork, or a fresh interpreter
    where it has threads), or forked by a zygote (``sandbox._zygote``), as in a pytest run."""
    from sandbox import _zygote

    if request.param == "zygote":
        _zygote.start()
    yield request.param
    _zygote.stop()


def test_exec_exit_statuses_follow_docker(engine, helpers):
    s = run_d(engine, ["sleep", "30"])
    assert lc.exec_run(engine, s.id, ["sh", "-c", "exit 7"]).returncode == 7
    r = lc.exec_run(engine, s.id, ["no-such-command"])
    assert r.returncode == 127 and b"executable file not found" in r.stderr
    assert lc.exec_run(engine, s.id, ["/etc/passwd"]).returncode == 126
    assert lc.exec_run(engine, s.id, ["sh", "-c", "kill -TERM $$"]).returncode == 143


def test_exec_env_workdir_input_and_timeout(engine, helpers):
    s = run_d(engine, ["sleep", "30"], env=("A=from-run",))
    r = lc.exec_run(engine, s.id, ["sh", "-c", "echo $A $B; pwd; cat"], env=["B=from-exec"],
                    workdir="/etc", input=b"piped\n")
    assert r.stdout.decode().split("\n")[:3] == ["from-run from-exec", "/etc", "piped"]
    t0 = time.monotonic()
    with pytest.raises(lc.ExecTimeout):
        lc.exec_run(engine, s.id, ["sleep", "20"], timeout=0.5)
    assert time.monotonic() - t0 < 6
    procs = lc.exec_run(engine, s.id, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 20" not in procs


def test_exec_from_a_threaded_caller(engine):
    s = run_d(engine, ["sleep", "30"])
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        lc.exec_run(engine, s.id, ["true"]).returncode)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0, 0]


def test_exec_into_a_stopped_container_is_refused(engine):
    s = run_d(engine, ["true"])
    assert lc.wait(engine, s.id, timeout=10) == 0
    with pytest.raises(lc.ContainerNotRunning):
        lc.exec_run(engine, s.id, ["true"])


def test_wait_returns_the_exit_code_and_state_records_it(engine):
    s = run_d(engine, ["sh", "-c", "sleep 0.2; exit 3"])
    assert lc.wait(engine, s.id, timeout=10) == 3
    st = lc.state(engine, s.id)
    assert st.status == "exited" and st.exit_code == 3 and st.pid == 0
    assert cs.parse_time(st.finished_at) >= cs.parse_time(st.started_at)
    with pytest.raises(lc.WaitTimeout):
        lc.wait(engine, run_d(engine, ["sleep", "30"]).id, timeout=0.2)


def test_logs_keep_stdout_and_stderr_apart_and_tail(engine):
    s = run_d(engine, ["sh", "-c", "echo out1; echo err1 >&2; echo out2"])
    lc.wait(engine, s.id, timeout=10)
    assert list(lc.logs(engine, s.id, stderr=False)) == [("stdout", b"out1\n"),
                                                          ("stdout", b"out2\n")]
    assert list(lc.logs(engine, s.id, stdout=False)) == [("stderr", b"err1\n")]
    assert list(lc.logs(engine, s.id, stderr=False, tail=1)) == [("stdout", b"out2\n")]
    stamped = list(lc.logs(engine, s.id, stderr=False, timestamps=True, tail=1))[0][1]
    assert stamped.split(b" ", 1)[1] == b"out2\n" and stamped[:4].isdigit()


def test_logs_follow_streams_until_the_container_ends(engine):
    s = run_d(engine, ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done"])
    t0 = time.monotonic()
    seen = []
    for _stream, line in lc.logs(engine, s.id, follow=True):
        seen.append((time.monotonic() - t0, line))
    assert [ln for _, ln in seen] == [f"line{i}\n".encode() for i in range(1, 6)]
    assert seen[0][0] < seen[-1][0] - 0.4  # lines arrived as they were written


def test_stop_sends_the_stop_signal_first(engine):
    s = run_d(engine, ["sh", "-c", "trap 'echo got-usr1; exit 3' USR1; "
                       "while true; do sleep 0.05; done"],
              host=lc.HostOptions(stop_signal="USR1"))
    time.sleep(0.2)
    t0 = time.monotonic()
    lc.stop(engine, s.id, timeout=5)
    assert time.monotonic() - t0 < 3
    st = lc.state(engine, s.id)
    assert st.status == "exited" and st.exit_code == 3
    assert ("stdout", b"got-usr1\n") in list(lc.logs(engine, s.id))


def test_stop_kills_after_the_timeout(engine):
    s = run_d(engine, ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"])
    time.sleep(0.2)
    t0 = time.monotonic()
    lc.stop(engine, s.id, timeout=1)
    took = time.monotonic() - t0
    assert 0.9 < took < 5
    st = lc.state(engine, s.id)
    assert st.exit_code == 137 and no_processes_left(s.init_pid, 1)


def test_kill_with_a_signal_reaches_the_command(engine):
    s = run_d(engine, ["sh", "-c", "trap 'exit 42' HUP; while true; do sleep 0.05; done"])
    time.sleep(0.2)
    lc.kill(engine, s.id, "HUP")
    assert lc.wait(engine, s.id, timeout=5) == 42


def _count(engine, cid) -> int:
    return int(lc.exec_run(engine, cid, ["cat", "/tmp/count"]).stdout or b"0") \
        if lc.state(engine, cid).status == "running" else -1


def test_pause_freezes_every_process(engine):
    s = run_d(engine, ["sh", "-c", LOOP])
    time.sleep(0.3)
    lc.pause(engine, s.id)
    assert lc.state(engine, s.id).status == "paused"
    upper = Path(engine.load_config(s.id)["spec"]["rootfs"]["upper"])
    frozen = (upper / "tmp" / "count").read_text()
    time.sleep(0.4)
    assert (upper / "tmp" / "count").read_text() == frozen
    for pid in cs.container_processes(s.init_pid):
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T"
    with pytest.raises(SandboxError):
        lc.exec_run(engine, s.id, ["true"])
    lc.unpause(engine, s.id)
    time.sleep(0.3)
    assert int(_count(engine, s.id)) > int(frozen)


def test_remove_force_leaves_no_process_dir_or_mount(engine):
    s = run_d(engine, ["sleep", "30"])
    cdir = engine.store.container_dir(s.id)
    with pytest.raises(SandboxError, match="container is running"):
        lc.remove(engine, s.id)
    start = cs.proc_start_time(s.init_pid)
    lc.remove(engine, s.id, force=True)
    assert not os.path.exists(cdir)
    assert no_processes_left(s.init_pid, start)
    with open("/proc/self/mountinfo") as f:
        assert s.id not in f.read()
    assert s.id not in [c.id for c in lc.list_containers(engine, all=True)]


def test_auto_remove_detached_container_disappears_on_exit(engine):
    s = lc.run_detached(engine, "busybox", ["sh", "-c", "exit 5"], RunOptions(remove=True))
    assert lc.wait(engine, s.id, timeout=10) == 5
    deadline = time.monotonic() + 5
    while os.path.exists(engine.store.container_dir(s.id)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(engine.store.container_dir(s.id))


def test_setup_failure_raises_the_sandbox_error(engine):
    with pytest.raises(SandboxError) as exc:
        s = run_d(engine, ["no-such-binary"])
        lc.wait(engine, s.id, timeout=5)
        raise AssertionError(lc.state(engine, s.id))
    assert exc.value.exit_code == 127


def test_monitor_sigkill_is_detected_and_leaves_nothing(engine):
    s = run_d(engine, ["sleep", "60"])
    cdir = engine.store.container_dir(s.id)
    st = cs.read_state(cdir)
    init_start = st["init_start"]
    os.kill(st["monitor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while cs.alive(s.init_pid, init_start) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not cs.alive(s.init_pid, init_start), "the container outlived its monitor"
    assert lc.cleanup_stale(engine) >= 1
    now = lc.state(engine, s.id)
    assert now.status == "exited" and now.exit_code == 137
    with cs.state_lock(cdir):  # no stale lock
        pass
    lc.remove(engine, s.id)
    assert not os.path.exists(cdir)


def test_restart_policy_on_failure(engine):
    s = run_d(engine, ["sh", "-c", "echo run; exit 1"],
              host=lc.HostOptions(restart="on-failure:2"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = cs.read_state(engine.store.container_dir(s.id))
        if st.get("status") == "exited" and st.get("restart_count") == 2:
            break
        time.sleep(0.05)
    assert [ln for _, ln in lc.logs(engine, s.id)] == [b"run\n"] * 3


def test_start_again_after_exit_keeps_the_writable_layer(engine):
    s = run_d(engine, ["sh", "-c", "echo x >> /tmp/runs; cat /tmp/runs | wc -l"])
    lc.wait(engine, s.id, timeout=10)
    import json

    from sandbox.spec import spec_from_json

    lc.start(engine, spec_from_json(json.dumps(engine.load_config(s.id)["spec"])))
    lc.wait(engine, s.id, timeout=10)
    assert [ln for _, ln in lc.logs(engine, s.id)] == [b"1\n", b"2\n"]


def test_inspect_is_docker_shaped(engine):
    s = run_d(engine, ["sleep", "30"], name=f"insp-{os.getpid()}", labels={"k": "v"},
              host=lc.HostOptions(ports=(), stop_timeout=3))
    data = lc.inspect(engine, s.id)
    assert data["Id"] == s.id and data["Name"] == f"/insp-{os.getpid()}"
    assert data["State"]["Status"] == "running" and data["State"]["Running"] is True
    assert data["State"]["Pid"] == s.pid
    assert data["Config"]["Labels"]["k"] == "v" and data["Config"]["StopTimeout"] == 3
    assert data["Path"] == "sleep" and data["Args"] == ["30"]
    from sandbox._template import render as format_template

    assert format_template("{{.State.Status}} {{index .Config.Labels \"k\"}}", data) == \
        "running v"


def test_rename_and_unique_prefix(engine):
    s = run_d(engine, ["sleep", "30"], name=f"old-{os.getpid()}")
    lc.rename(engine, s.id, f"new-{os.getpid()}")
    assert lc.state(engine, f"new-{os.getpid()}").id == s.id
    assert lc.state(engine, s.id[:10]).id == s.id
    with pytest.raises(SandboxError):
        lc.state(engine, f"old-{os.getpid()}")


def test_top_and_stats_read_proc(engine):
    s = run_d(engine, ["sh", "-c", LOOP])
    heads, rows = lc.top(engine, s.id)
    assert heads[1] == "PID" and str(s.pid) in [r[1] for r in rows]
    stats = lc.stats(engine, [s.id], interval=0.3)
    assert stats[0]["PIDs"] >= 2 and stats[0]["MemUsage"] > 0


def test_log_rotation_caps_the_size(tmp_path: Path):
    from sandbox._logs import LogWriter, read_log

    log = tmp_path / "log.json"
    w = LogWriter(str(log), max_size=2000, max_file=3)
    for i in range(200):
        w.write("stdout", f"line {i:04d}\n".encode())
    w.write("stderr", b"partial, no newline")
    w.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log.json", "log.json.1", "log.json.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    lines = [ln for _, ln in read_log(str(log))]
    assert lines[-1] == b"partial, no newline"
    assert lines[-2] == b"line 0199\n"
    kept = [int(ln.split()[1]) for ln in lines[:-1]]
    assert kept == list(range(kept[0], 200))  # oldest dropped, order kept


def test_exec_with_a_tty(engine):
    s = run_d(engine, ["sleep", "30"])
    r = lc.exec_run(engine, s.id, ["sh", "-c", "tty; test -t 0 && echo is-a-tty"], tty=True)
    out = r.stdout.decode().replace("\r", "")
    assert r.returncode == 0 and out.startswith("/dev/pts/") and "is-a-tty" in out


def test_detached_tty_output_is_logged(engine):
    s = run_d(engine, ["sh", "-c", "test -t 1 && echo tty-out"], tty=True)
    assert lc.wait(engine, s.id, timeout=10) == 0
    assert b"".join(ln for _, ln in lc.logs(engine, s.id)).replace(b"\r", b"") == b"tty-out\n"


@pytest.mark.requires_subuid
def test_remove_deletes_files_of_the_subordinate_range(engine):
    s = run_d(engine, ["sh", "-c", "mkdir -p /tmp/r/deep; touch /tmp/r/deep/f; "
                       "chown -R app /tmp/r;"
                       " chmod 700 /tmp/r /tmp/r/deep; exec sleep 30"])
    time.sleep(0.2)
    cdir = engine.store.container_dir(s.id)
    lc.remove(engine, s.id, force=True)
    assert not os.path.exists(cdir)


def test_stop_and_remove_a_container_that_keeps_restarting(engine):
    s = run_d(engine, ["sh", "-c", "exit 1"], host=lc.HostOptions(restart="always"))
    time.sleep(0.5)
    lc.stop(engine, s.id, timeout=1)
    time.sleep(1.0)
    st = cs.read_state(engine.store.container_dir(s.id))
    assert st["status"] == "exited"
    count = st.get("restart_count")
    time.sleep(1.0)
    assert cs.read_state(engine.store.container_dir(s.id)).get("restart_count") == count
    lc.remove(engine, s.id)
    assert not os.path.exists(engine.store.container_dir(s.id))


def _catch_the_monitor_launching(cdir: str) -> tuple[int, int]:
    """Wait for the moment the monitor starts the next run of a restarting container: it has
    forked the run's first process, but the state still says ``exited`` (the run is not yet
    recorded). Returns the monitor's (pid, start time)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = cs.read_state(cdir)
        mon = int(st.get("monitor_pid") or 0)
        if st.get("status") == "exited" and mon and cs.children_of(mon):
            return mon, int(st.get("monitor_start") or 0)
        time.sleep(0.0005)
    raise AssertionError(f"the monitor never started another run: {cs.read_state(cdir)}")


@pytest.mark.parametrize("how", ["stop", "kill", "rm -f"])
def test_stop_between_restarts_is_for_good(engine, how):
    """``stop`` (``kill``, ``rm -f``) lands while the monitor is starting the next run of a
    ``--restart always`` container, the window the restart loop had: once it returns, the
    monitor is gone, the state is ``exited`` and stays so, and nothing runs again."""
    for _ in range(3):
        s = run_d(engine, ["sh", "-c", "exit 3"], host=lc.HostOptions(restart="always"))
        cdir = engine.store.container_dir(s.id)
        monitor = _catch_the_monitor_launching(cdir)
        if how == "stop":
            lc.stop(engine, s.id, timeout=1)
        elif how == "kill":
            lc.kill(engine, s.id)
        else:
            lc.remove(engine, s.id, force=True)
            assert not cs.alive(*monitor) and not os.path.exists(cdir)
            continue
        st = cs.read_state(cdir)
        assert st["status"] == "exited" and st["exit_code"] in (3, 137, 143), st
        gone = not cs.alive(*monitor)
        time.sleep(0.6)  # longer than the monitor's next back-off (0.4 s)
        again = cs.read_state(cdir)
        assert (again["status"], again["restart_count"], again["started_at"]) == (
            "exited", st["restart_count"], st["started_at"])
        assert gone  # nothing was left that could restart it


def test_kill_ends_the_restart_policy_as_docker_does(engine):
    """moby ``killWithSignal``: SIGKILL, the container's stop signal, or any signal when it has
    none of its own, end the restart policy; another signal leaves it in force."""
    cmd = ["sh", "-c", "trap 'exit 4' HUP; while true; do sleep 0.05; done"]
    ended = run_d(engine, cmd, host=lc.HostOptions(restart="always"))
    kept = run_d(engine, cmd, host=lc.HostOptions(restart="always", stop_signal="SIGUSR1"))
    time.sleep(0.3)  # the traps are set
    for s in (ended, kept):
        lc.kill(engine, s.id, "HUP")
    deadline = time.monotonic() + 10
    while cs.read_state(engine.store.container_dir(kept.id)).get("restart_count", 0) < 1:
        assert time.monotonic() < deadline, "the HUP was not followed by a restart"
        time.sleep(0.05)
    assert lc.wait(engine, ended.id, timeout=10) == 4
    time.sleep(0.6)  # longer than the first back-off (0.2 s)
    st = cs.read_state(engine.store.container_dir(ended.id))
    assert (st["status"], st["exit_code"], st.get("restart_count")) == ("exited", 4, 0)
    lc.stop(engine, kept.id, timeout=1)


def test_inspect_shows_a_container_between_restarts_as_restarting(engine):
    s = run_d(engine, ["sh", "-c", "exit 3"], host=lc.HostOptions(restart="always"))
    deadline = time.monotonic() + 10
    while True:
        state = lc.inspect(engine, s.id)["State"]
        if state["Restarting"]:
            break
        assert time.monotonic() < deadline, "never seen between restarts"
        time.sleep(0.01)
    assert (state["Status"], state["Running"], state["ExitCode"]) == ("restarting", False, 3)
    lc.stop(engine, s.id, timeout=1)
    state = lc.inspect(engine, s.id)["State"]
    assert (state["Status"], state["Restarting"]) == ("exited", False)


def test_detached_container_on_slirp4netns_has_its_tap(engine):
    import shutil

    if shutil.which("slirp4netns") is None or not os.access("/dev/net/tun", os.W_OK):
        pytest.skip("slirp4netns and a usable /dev/net/tun are needed")
    s = run_d(engine, ["sleep", "30"], network="slirp4netns")
    r = lc.exec_run(engine, s.id, ["ip", "-o", "-4", "addr", "show", "tap0"])
    assert r.returncode == 0 and b"inet 10.0.2.100/24" in r.stdout, r.stderr


def test_limits_go_to_a_delegated_cgroup_v2_and_the_container_is_moved_in(
        engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The wiring, on a cgroupfs-shaped tree (this needs no delegated host): the limits are
    written into the container's own cgroup, its first process is moved in before it starts,
    and the cgroup is removed with the run."""
    from sandbox import _cgroups
    from sandbox.lifecycle import HostOptions

    root = tmp_path / "cgroup"
    base = root / "user.slice" / "user@1.service"
    (base / "app.slice").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    for d in (base, base / "app.slice"):
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.subtree_control").write_text("cpu memory pids\n" if d == base else "")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/user.slice/user@1.service/app.slice\n")
    monkeypatch.setattr(lc, "_CGROUP_V2_MARK", str(root / "cgroup.controllers"))
    monkeypatch.setattr(_cgroups, "ROOT", str(root))
    monkeypatch.setattr(_cgroups, "PROC_SELF", str(proc))
    monkeypatch.setattr(_cgroups, "_cache", {})
    removed = []
    monkeypatch.setattr(_cgroups, "remove", removed.append)  # a real cgroupfs rmdirs it

    host = HostOptions(memory=64 << 20, nano_cpus=500_000_000, pids_limit=20)
    spec = lc.create(engine, "busybox", ["true"], RunOptions(), host)
    engine.made.append(spec.id)
    cg = base / "sandbox" / spec.id
    cg.mkdir(parents=True)
    for f in ("cgroup.procs", "memory.max", "cpu.max", "pids.max"):
        (cg / f).write_text("")  # the files a real cgroupfs makes
    (base / "sandbox" / "cgroup.subtree_control").write_text("")
    seen = []
    real_write_state = cs.write_state
    monkeypatch.setattr(cs, "write_state", lambda d, st, **kw: (seen.append(dict(st)),
                                                                real_write_state(d, st, **kw)))
    # in a forked child: the inline start leaves its process in a PID namespace whose init has
    # gone (no more forks there), and the pytest worker must go on
    out = json.loads(in_child(lambda: json.dumps({"code": lc.run_foreground(engine, spec),
                                                  "seen": seen, "removed": removed})))
    seen[:], removed[:] = out["seen"], out["removed"]
    assert out["code"] == 0
    assert (base / "sandbox" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (cg / "memory.max").read_text() == str(64 << 20)
    assert (cg / "cpu.max").read_text() == "50000 100000"
    assert (cg / "pids.max").read_text() == "20"
    running = [st for st in seen if st.get("status") == "running"][0]
    assert running["cgroup"] == str(cg)
    assert (cg / "cgroup.procs").read_text() == str(running["cpid"])  # C, before its namespaces
    assert removed == [str(cg)]
    assert cs.read_state(spec.container_dir)["cgroup"] == ""


def test_pause_uses_the_cgroup_freezer_where_the_container_has_one(engine, tmp_path: Path):
    s = run_d(engine, ["sleep", "30"])
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "cgroup.freeze").write_text("")
    (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cs.update_state(engine.store.container_dir(s.id), cgroup=str(cg))
    lc.pause(engine, s.id)
    assert (cg / "cgroup.freeze").read_text() == "1"
    assert lc.state(engine, s.id).status == "paused"
    with open(f"/proc/{s.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] != "T"  # no SIGSTOP: the freezer's job
    (cg / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    lc.unpause(engine, s.id)
    assert (cg / "cgroup.freeze").read_text() == "0"
    assert lc.state(engine, s.id).status == "running"


def test_a_container_whose_directory_went_is_taken_down(engine, tmp_path: Path):
    """A store deleted under a running container (pytest's basetemp rotation does it) must not
    leave the container and its monitor running forever."""
    s = run_d(engine, ["sleep", "60"])
    cdir = engine.store.container_dir(s.id)
    st = cs.read_state(cdir)
    away = cdir + ".away"
    os.rename(cdir, away)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                cs.alive(st["init_pid"], st["init_start"])
                or cs.alive(st["monitor_pid"], st["monitor_start"])):
            time.sleep(0.05)
        assert not cs.alive(st["init_pid"], st["init_start"])
        assert not cs.alive(st["monitor_pid"], st["monitor_start"])
    finally:
        os.rename(away, cdir)


def test_container_names_index(engine, session_store: Path):
    """Names resolve through container-names/NAME links: claimed atomically, moved by rename,
    released by rm, a link to a vanished container is free, and a store without the index
    (made by an older engine) gets it rebuilt from the configs."""
    import shutil

    base = f"idx{os.getpid()}"
    s = run_d(engine, ["sleep", "30"], name=f"{base}-a")
    assert engine.resolve_container(f"{base}-a") == s.id
    link = os.readlink(session_store / "container-names" / f"{base}-a")
    assert len(link) < 60  # kept in the inode: no block to allocate and free (_name_link)
    assert _link_cid(link) == s.id
    lc.rename(engine, s.id, f"{base}-b")
    assert engine.resolve_container(f"{base}-b") == s.id
    assert engine.name_owner(f"{base}-a") is None
    with pytest.raises(SandboxError, match="already in use"):
        lc.create(engine, "busybox", ["true"], RunOptions(name=f"{base}-b"))
    shutil.rmtree(session_store / "container-names")  # an index-less store
    assert engine.resolve_container(f"{base}-b") == s.id
    lc.remove(engine, s.id, force=True)
    assert not os.path.lexists(session_store / "container-names" / f"{base}-b")
    os.symlink("f" * 64, session_store / "container-names" / f"{base}-c")  # its container gone
    spec = lc.create(engine, "busybox", ["true"], RunOptions(name=f"{base}-c"))
    engine.made.append(spec.id)
    assert engine.resolve_container(f"{base}-c") == spec.id
    # a link as engines before _name_link made it (the id in hex) still resolves
    os.unlink(session_store / "container-names" / f"{base}-c")
    os.symlink(spec.id, session_store / "container-names" / f"{base}-c")
    assert engine.resolve_container(f"{base}-c") == spec.id
    assert engine.name_owner(f"{base}-c") == spec.id


def test_name_links_round_trip_and_refuse_garbage():
    cid = os.urandom(32).hex()
    assert _link_cid(_name_link(cid)) == cid and len(_name_link(cid)) == 43
    assert _link_cid(cid) == cid
    for bad in ("", "x" * 43 + "!", "short", "%" * 43):
        with pytest.raises(ValueError):
            _link_cid(bad)


def test_one_name_one_container_under_concurrent_creates(cli, busybox_image):
    import subprocess

    name = f"racer{os.getpid()}"
    procs = [cli.popen("create", "--name", name, "busybox", "true", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE) for _ in range(6)]
    outputs = [p.communicate(timeout=60) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    assert sorted(code for code, _, _ in results) == [0, 125, 125, 125, 125, 125], results
    assert all("already in use" in err for code, _, err in results if code)
    assert cli("rm", name).returncode == 0


def test_an_exit_recorded_just_before_the_owner_went_is_not_overwritten(engine):
    """The race behind a 137 seen once in CI: a reader took the state while the monitor lived
    ("running"), the monitor recorded the exit and exited, the reader then found the owner
    gone. Reaping must go by the file as it is now, not by what was read before."""
    spec = lc.create(engine, "busybox", ["true"], RunOptions())
    engine.made.append(spec.id)
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()  # an owner that existed and is gone
    gone, start = proc.pid, 1
    cs.write_state(spec.container_dir, {"status": "exited", "exit_code": 3,
                                        "monitor_pid": gone, "monitor_start": start})
    st = lc._reap_stale(engine, spec.id, spec.container_dir, engine.load_config(spec.id))
    assert (st["status"], st["exit_code"]) == ("exited", 3)
    assert cs.read_state(spec.container_dir)["exit_code"] == 3
    assert lc.wait(engine, spec.id, timeout=5) == 3


def test_cleanup_reads_only_the_containers_an_owner_holds(engine, monkeypatch):
    """``cleanup_stale`` runs on every ``run``: it looks at the containers marked owned, not at
    every container (a store of many exited ones costs it one listing), and still finds a dead
    owner."""
    import subprocess

    quiet = [lc.create(engine, "busybox", ["true"], RunOptions()) for _ in range(3)]
    engine.made += [s.id for s in quiet]
    for s in quiet[1:]:
        cs.write_state(s.container_dir, {"status": "exited", "exit_code": 0})
    dead = lc.create(engine, "busybox", ["true"], RunOptions())
    engine.made.append(dead.id)
    proc = subprocess.Popen(["true"])
    proc.wait()  # an owner that existed and is gone
    cs.write_state(dead.container_dir, {"status": "running", "pid": 0, "init_pid": 0,
                                        "monitor_pid": proc.pid, "monitor_start": 1})
    assert os.path.exists(cs.owned_marker(dead.container_dir))
    assert not any(os.path.exists(cs.owned_marker(s.container_dir)) for s in quiet)
    read: list[str] = []
    real = cs.read_state
    monkeypatch.setattr(cs, "read_state", lambda cdir: read.append(cdir) or real(cdir))
    assert lc.cleanup_stale(engine) == 1
    assert set(read) == {dead.container_dir}
    monkeypatch.undo()
    assert (lc.state(engine, dead.id).status, lc.state(engine, dead.id).exit_code) == (
        "exited", 137)
    assert not os.path.exists(cs.owned_marker(dead.container_dir))


def _gone_process() -> tuple[int, int]:
    """(pid, start time) of a process that existed and has exited."""
    import subprocess

    proc = subprocess.Popen(["sleep", "60"])
    start = 0
    while not start:
        start = cs.proc_start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


@pytest.mark.parametrize("remove", [False, True])
def test_a_run_killed_while_starting_its_container_is_reaped(engine, remove):
    """A foreground run SIGKILLed after PID 1's fork but before it recorded the container
    running leaves a "created" container whose marker names the run and PID 1
    (``mark_starting``). The next cleanup finds the run gone: the container is recorded as
    exited (137, with why), or removed when it was ``--rm``."""
    spec = lc.create(engine, "busybox", ["true"], RunOptions(remove=remove))
    engine.made.append(spec.id)
    cs.mark_starting(spec.container_dir, _gone_process(), _gone_process())
    assert lc.cleanup_stale(engine) == 1
    if remove:
        assert not os.path.exists(spec.container_dir)
        assert spec.id not in [s.id for s in lc.list_containers(engine, all=True)]
    else:
        st = cs.read_state(spec.container_dir)
        assert (st["status"], st["exit_code"]) == ("exited", 137)
        assert "while starting" in st["error"]
    assert not os.path.exists(cs.owned_marker(spec.container_dir))


def test_a_container_being_started_by_a_live_run_is_left_alone(engine):
    """The same marker with a live owner (this process): still "created", not reaped, and
    an empty or garbled marker names nobody."""
    spec = lc.create(engine, "busybox", ["true"], RunOptions())
    engine.made.append(spec.id)
    me = (os.getpid(), cs.proc_start_time(os.getpid()))
    pid_1 = _gone_process()
    cs.mark_starting(spec.container_dir, me, pid_1)
    assert cs.starting_owner(spec.container_dir) == {
        "monitor_pid": me[0], "monitor_start": me[1], "init_pid": pid_1[0],
        "init_start": pid_1[1]}
    assert lc.cleanup_stale(engine) == 0
    assert lc.state(engine, spec.id).status == "created"
    for garbage in (b"", b"12 x 3 4", b"1 2 3", b"12 0 3 4"):  # 0: a start time not read
        Path(cs.owned_marker(spec.container_dir)).write_bytes(garbage)
        assert cs.starting_owner(spec.container_dir) == {}
        assert lc.state(engine, spec.id).status == "created"


def test_a_foreground_run_marks_its_container_with_itself_and_pid_1(cli, busybox_image,
                                                                     session_store: Path):
    """What a real ``run`` writes in the marker is what its running state then records."""
    import subprocess

    name = f"marked{os.getpid()}"
    proc = cli.popen("run", "--name", name, "busybox", "sleep", "30",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cid = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = cli("ps", "-q", "--no-trunc", "--filter", f"name={name}")
            cid = r.stdout.strip()
            if cid and cs.read_state(str(session_store / "containers" / cid)).get(
                    "status") == "running":
                break
            time.sleep(0.05)
        cdir = str(session_store / "containers" / cid)
        st = cs.read_state(cdir)
        assert st["status"] == "running" and st["monitor_pid"] == proc.pid
        owner = cs.starting_owner(cdir)
        assert (owner["monitor_pid"], owner["monitor_start"]) == (st["monitor_pid"],
                                                                  st["monitor_start"])
        # PID 1 where the CLI forks it itself; none yet where a process of its own (C) does,
        # as for the fuse driver's server
        driver = json.loads(Path(cdir, "config.json").read_text())["spec"]["rootfs"]["driver"]
        pid_1 = (st["init_pid"], st["init_start"]) if driver != "fuse" else (0, 0)
        assert (owner["init_pid"], owner["init_start"]) == pid_1
    finally:
        proc.kill()
        proc.wait()
        cli("rm", "-f", name)


def test_the_owned_marker_lives_as_long_as_the_owned_state(engine):
    s = run_d(engine, ["sleep", "60"])
    marker = cs.owned_marker(engine.store.container_dir(s.id))
    assert os.path.exists(marker)
    lc.pause(engine, s.id)
    assert os.path.exists(marker)  # paused is live: its monitor still owns it
    lc.unpause(engine, s.id)
    lc.stop(engine, s.id, timeout=1)
    assert lc.state(engine, s.id).status == "exited" and not os.path.exists(marker)
    lc.restart(engine, s.id, timeout=1)
    assert os.path.exists(marker)
    lc.remove(engine, s.id, force=True)
    assert not os.path.exists(marker)
