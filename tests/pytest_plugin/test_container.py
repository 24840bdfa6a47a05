"""The ``container``, ``container_factory`` and ``sandbox`` fixtures; diagnostics; retention."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.requires_userns, pytest.mark.requires_lifecycle]

FIXTURE_API = r'''
import os, time
import pytest

def test_run_and_results(container):
    r = container.run(["sh", "-c", "echo out; printf 'err\n' >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr_bytes) == (3, "out\n", b"err\n")
    assert container.run(["cat"], input=b"piped").stdout_bytes == b"piped"
    r = container.run("echo $GREETING; pwd; id -u", env={"GREETING": "hi"}, workdir="/tmp")
    assert r.stdout.split() == ["hi", "/tmp", "0"]
    with pytest.raises(AssertionError) as info:
        container.run(["sh", "-c", "echo visible-output; exit 4"], check=True)
    assert "exited with status 4" in str(info.value) and "visible-output" in str(info.value)
    assert container.image == "host" and len(container.id) == 64

def test_files(container, tmp_path):
    container.write_text("/etc/app.conf", "key=value\n")
    assert container.path("/etc/app.conf").read_text() == "key=value\n"
    assert container.run(["cat", "/etc/app.conf"]).stdout == "key=value\n"
    src = tmp_path / "data.txt"
    src.write_text("payload")
    container.copy_in(src, "/srv/data.txt")
    container.copy_out("/srv/data.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "payload"
    assert ("A", "/etc/app.conf") in container.diff()
    assert not os.path.exists("/etc/app.conf")     # the host is untouched

def test_each_test_gets_a_fresh_container_1(container):
    assert container.run(["test", "-e", "/etc/app.conf"]).returncode == 1
    container.run("touch /etc/leftover", check=True)

def test_each_test_gets_a_fresh_container_2(container):
    assert container.run(["test", "-e", "/etc/leftover"]).returncode == 1

@pytest.mark.container(env={"FROM_MARKER": "m"}, workdir="/var", network="none")
def test_marker_options(container):
    r = container.run("echo $FROM_MARKER; pwd; ls /sys/class/net", check=True)
    assert r.stdout.split() == ["m", "/var", "lo"]

@pytest.mark.container(command=["sh", "-c", "echo service-started; exec sleep 1000"])
def test_logs_of_the_main_command(container):
    for _ in range(50):
        if "service-started" in container.logs():
            break
        time.sleep(0.1)
    assert container.logs() == "service-started\n"
    assert "/.sandbox-upper/" not in overlay_of(container, "/opt")  # may end: layer on disk

def overlay_of(container, mountpoint):
    for line in container.run(["cat", "/proc/self/mountinfo"], check=True).stdout.splitlines():
        if line.split()[4] == mountpoint and " - overlay " in line:
            return line
    raise AssertionError(f"no overlay on {mountpoint}")

def test_layer_in_memory_and_its_diff(container):
    # a container that runs until it is removed has its writable layer in a tmpfs
    assert "/.sandbox-upper/opt," in overlay_of(container, "/opt")
    container.run("mkdir -p /opt/made && echo x > /opt/made/f && rm /etc/debian_version",
                  check=True)
    changes = container.diff()
    assert ("A", "/opt/made/f") in changes and ("D", "/etc/debian_version") in changes
    assert os.path.exists("/etc/debian_version")   # the host is untouched
    # and none of it, not even the host image's skeleton, is in the store's filesystem
    assert os.listdir(container.inspect()["GraphDriver"]["Data"]["UpperDir"]) == []
'''


def test_container_fixture_api(pytester: pytest.Pytester, run_inner, containers_left) -> None:
    pytester.makepyfile(test_api=FIXTURE_API)
    result = run_inner("-q")
    result.assert_outcomes(passed=7)
    assert containers_left() == []


def test_layer_on_disk_when_asked(pytester: pytest.Pytester, run_inner, containers_left) -> None:
    pytester.makepyfile(test_d='''
        import pytest

        @pytest.mark.container(isolate=True)
        def test_isolated():
            assert "/.sandbox-upper/" not in open("/proc/self/mountinfo").read()

        def test_fixture(container):
            info = container.run(["cat", "/proc/self/mountinfo"], check=True).stdout
            assert "/.sandbox-upper/" not in info
            container.run("touch /etc/on-disk", check=True)
            assert ("A", "/etc/on-disk") in container.diff()
    ''')
    run_inner("-q", "--sandbox-layer=disk").assert_outcomes(passed=2)
    assert containers_left() == []


def test_failure_sections_and_keep(pytester: pytest.Pytester, run_inner, containers_left,
                                   monkeypatch, store_root) -> None:
    pytester.makeconftest('''
        import json, os

        def pytest_sandbox_container_finished(item, container, report):
            with open(os.environ["FINISHED_LOG"], "a") as f:
                f.write(json.dumps([item.name, container.name, report.outcome]) + "\\n")
    ''')
    pytester.makepyfile(test_fail='''
        import pytest

        @pytest.mark.container(command=["sh", "-c", "echo from-the-main-command; exec sleep 1000"])
        def test_breaks(container):
            import time
            time.sleep(0.3)
            container.run("echo x > /etc/written-by-test", check=True)
            assert container.run(["cat", "/etc/written-by-test"]).stdout == "y\\n"

        def test_passes(container):
            pass
    ''')
    log = pytester.path / "finished.log"
    monkeypatch.setenv("FINISHED_LOG", str(log))
    result = run_inner("--sandbox-keep=failed")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*- sandbox log of *-*", "from-the-main-command",
        "*- sandbox diff of *-*", "A /etc/written-by-test",
        "*- sandbox container * kept -*",
        "*enter it:  sandbox --root * exec -it * sh",
        "*remove it: sandbox --root * rm -f *",
    ])
    lines = log.read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ['["test_breaks"', '["test_passes"']
    assert '"failed"]' in lines[0] and '"passed"]' in lines[1]
    kept = containers_left()
    assert len(kept) == 1                   # only the failed test's container is kept
    # the next run removes nothing that was kept on purpose, and `rm -f` gets rid of it
    from sandbox import lifecycle
    from sandbox.containers import Engine
    from sandbox.store import Store

    engine = Engine(Store(str(store_root)))
    assert lifecycle.state(engine, kept[0]).status == "running"
    lifecycle.remove(engine, kept[0], force=True)
    assert containers_left() == []


def test_container_factory_scopes(pytester: pytest.Pytester, run_inner, containers_left) -> None:
    pytester.makepyfile(test_a='''
        import pytest

        def test_shared_1(container_factory):
            c = container_factory()
            c.run("echo 1 >> /srv/count", check=True)

        def test_shared_2(container_factory):
            c = container_factory()
            assert c.run(["cat", "/srv/count"]).stdout == "1\\n"   # the same container

        def test_fresh(container_factory):
            c = container_factory(fresh=True)
            assert c.run(["test", "-e", "/srv/count"]).returncode == 1

        def test_module_scope(module_container_factory, container_factory):
            assert module_container_factory().id != container_factory().id
    ''', test_b='''
        def test_other_module(module_container_factory, container_factory):
            m = module_container_factory(env={"K": "v"})
            assert m.run("echo $K").stdout == "v\\n"
            assert container_factory().run(["cat", "/srv/count"]).stdout == "1\\n"
    ''')
    run_inner("-q", "-p", "no:randomly").assert_outcomes(passed=5)
    assert containers_left() == []


def test_sandbox_fixture(pytester: pytest.Pytester, run_inner, containers_left) -> None:
    pytester.makepyfile(test_s='''
        def test_engine_and_extra_containers(sandbox):
            assert sandbox.images.get("host").builtin
            r = sandbox.run("host", ["sh", "-c", "echo from-run"])
            assert r.stdout == "from-run\\n"
            c = sandbox.container("host", env={"X": "1"})
            assert c.run("echo $X").stdout == "1\\n"
    ''')
    run_inner("-q").assert_outcomes(passed=1)
    assert containers_left() == []


def test_engine_errors_are_one_line(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(test_e='''
        import pytest

        @pytest.mark.container(image="no-such-image:1")
        def test_missing_image(container):
            pass
    ''')
    result = run_inner("-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*sandbox: start no-such-image:1: unable to find image "
                                 "'no-such-image:1' locally*"])


@pytest.mark.slow
def test_xdist_each_worker_its_own_containers(pytester: pytest.Pytester, run_inner,
                                              containers_left) -> None:
    pytester.makepyfile(test_x='''
        import os, pytest

        @pytest.mark.parametrize("n", range(6))
        def test_isolated(n, container):
            assert container.run(["test", "-e", "/etc/mark"]).returncode == 1
            container.run(f"echo {n} > /etc/mark", check=True)
            assert os.environ["PYTEST_XDIST_WORKER"] in ("gw0", "gw1")
    ''')
    run_inner("-n", "2", "-q").assert_outcomes(passed=6)
    assert containers_left() == []


def test_example_project_passes(pytester: pytest.Pytester, run_inner) -> None:
    """examples/kvstore: a service in one container reached from another through a port."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "examples" / "kvstore"
    shutil.copytree(src, pytester.path / "kvstore")
    pytester.chdir()
    result = run_inner("-q", "-p", "no:randomly", "kvstore")
    result.assert_outcomes(passed=5)


@pytest.mark.slow
def test_sandbox_build_once_and_run(pytester: pytest.Pytester, run_inner, tmp_path) -> None:
    """sandbox.build(): a Dockerfile over an imported busybox image, built once per run."""
    from pathlib import Path

    from imagekit import busybox_path

    if not (busybox_path() is not None):
        pytest.skip("needs busybox-static for a base image")
    try:
        import sandbox.build.builder  # noqa: F401
    except ImportError:
        pytest.skip("this engine has no Dockerfile builder")
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from imagekit import make_busybox_tar

    tar = make_busybox_tar(tmp_path / "bb.tar", tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM bb-base:1\nRUN echo built > /etc/built-by-dockerfile\n")
    pytester.makeconftest(f'''
        import pytest

        @pytest.fixture(scope="session")
        def app_image(sandbox):
            sandbox.import_rootfs({str(tar)!r}, "bb-base:1")
            return sandbox.build({str(ctx)!r}, "app-test:1")
    ''')
    pytester.makepyfile(test_b='''
        import pytest

        def test_built(app_image, sandbox):
            c = sandbox.container("app-test:1")
            assert c.run(["cat", "/etc/built-by-dockerfile"]).stdout == "built\\n"
    ''')
    run_inner("-q").assert_outcomes(passed=1)
