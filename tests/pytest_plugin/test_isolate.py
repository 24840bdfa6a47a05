"""``isolate=True``: the test body runs in a forked child inside a fresh container."""

from __future__ import annotations

import os

import pytest
from procs import processes_with

pytestmark = pytest.mark.requires_userns

OUTCOMES = r'''
import os, sys, time, warnings, logging
import pytest

@pytest.fixture
def prepared(tmp_path):
    (tmp_path / "in.txt").write_text("from the parent")
    yield tmp_path
    # the child's write to tmp_path is visible to the parent's teardown
    assert (tmp_path / "out.txt").read_text() == "from the child"

@pytest.mark.container(isolate=True)
def test_pass(prepared):
    # a fresh PID namespace: PID 1 is the container's init, 2 holds a container set up ahead
    assert os.getpid() == 3
    with open("/etc/hosts", "a") as f:
        f.write("10.9.8.7 isolated\n")            # the host never sees this
    assert (prepared / "in.txt").read_text() == "from the parent"
    (prepared / "out.txt").write_text("from the child")
    print("stdout from the child")
    print("stderr from the child", file=sys.stderr)
    logging.getLogger("t").warning("log from the child")

def test_host_untouched():
    with open("/etc/hosts") as f:
        assert "isolated" not in f.read()

@pytest.mark.container(isolate=True)
def test_fail_rewritten():
    values = {"answer": 41}
    assert values["answer"] == 42

@pytest.mark.container(isolate=True)
def test_error_raises():
    raise KeyError("missing-key")

@pytest.mark.container(isolate=True)
def test_skip_inside():
    pytest.skip("skipped inside the container")

@pytest.mark.xfail(reason="expected to fail", strict=True)
@pytest.mark.container(isolate=True)
def test_xfail():
    assert False

@pytest.mark.xfail(reason="should fail but passes", strict=True)
@pytest.mark.container(isolate=True)
def test_xpass_strict():
    pass

@pytest.mark.container(isolate=True)
def test_imperative_xfail():
    pytest.xfail("imperative xfail")

@pytest.mark.container(isolate=True)
def test_segfault():
    import ctypes
    ctypes.string_at(0)

@pytest.mark.container(isolate=True, timeout=1)
def test_timeout():
    time.sleep(30)

@pytest.mark.container(isolate=True)
def test_os_exit():
    os._exit(7)

@pytest.mark.container(isolate=True)
def test_warning():
    warnings.warn("warned in the child", UserWarning)

@pytest.mark.container(isolate=True, env={"ISOLATE_VAR": "yes"}, network="none")
def test_env_and_network():
    assert os.environ["ISOLATE_VAR"] == "yes"
    assert sorted(os.listdir("/sys/class/net")) == ["lo"]
    assert open("/proc/1/cmdline", "rb").read()  # our own PID 1
'''


def test_isolate_outcomes(pytester: pytest.Pytester, run_inner, containers_left) -> None:
    pytester.makepyfile(test_outcomes=OUTCOMES)
    result = run_inner("-rA", "-W", "default::UserWarning")
    result.assert_outcomes(passed=4, failed=6, skipped=1, xfailed=2)
    out = result.stdout.str()
    # assertion rewriting and the traceback survive the trip
    result.stdout.fnmatch_lines([
        "*def test_fail_rewritten():*",
        ">*assert values[[]\"answer\"[]] == 42",
        "E*assert 41 == 42",
        "test_outcomes.py:*: AssertionError",
    ])
    result.stdout.fnmatch_lines(["E*KeyError: 'missing-key'"])
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] test_outcomes.py:*: skipped inside the container"])
    result.stdout.fnmatch_lines(["XFAIL test_outcomes.py::test_xfail - expected to fail"])
    result.stdout.fnmatch_lines(["XFAIL test_outcomes.py::test_imperative_xfail*"])
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] should fail but passes*"])
    result.stdout.fnmatch_lines(["*test_outcomes.py:*: the isolated test body crashed: killed by "
                                 "SIGSEGV*"])
    result.stdout.fnmatch_lines(["*the isolated test body timed out after 1s and was killed*"])
    result.stdout.fnmatch_lines(["*the isolated test body exited with status 7*"])
    result.stdout.fnmatch_lines(["*UserWarning: warned in the child*"])
    # captured output and logging of the child are reported with the test
    passes = out[out.index("PASSES"):]
    assert "stdout from the child" in passes
    assert "stderr from the child" in passes
    assert "log from the child" in passes
    assert containers_left() == []


def test_isolate_under_xdist(pytester: pytest.Pytester, run_inner, containers_left) -> None:
    pytester.makepyfile(test_x='''
        import os, pytest

        @pytest.mark.parametrize("n", range(6))
        @pytest.mark.container(isolate=True)
        def test_own_container(n, tmp_path):
            # each test sees only its own writes, whichever worker runs it
            assert not os.path.exists("/etc/marker")
            open("/etc/marker", "w").write(str(n))
            # set up ahead by the worker's zygote (PID 2 holds it), its layer in memory
            assert os.getpid() == 3
            assert "/.sandbox-upper/" in open("/proc/self/mountinfo").read()
    ''')
    result = run_inner("-n", "2", "-q")
    result.assert_outcomes(passed=6)
    assert containers_left() == []


def test_isolated_body_on_a_user_mode_network(pytester: pytest.Pytester, run_inner,
                                              containers_left) -> None:
    import shutil

    if shutil.which("pasta") is None or not os.access("/dev/net/tun", os.W_OK):
        pytest.skip("needs pasta (package passt) and a usable /dev/net/tun")
    with open("/proc/net/route") as f:
        if not any(line.split()[1] == "00000000" for line in f.readlines()[1:]):
            pytest.skip("pasta copies the host's routed interface; this host has no default route")
    pytester.makepyfile(test_x='''
        import os, pytest

        @pytest.mark.parametrize("n", range(3))
        @pytest.mark.container(isolate=True, network="pasta:--ns-ifname,tnet0")
        def test_net(n):
            assert sorted(os.listdir("/sys/class/net")) == ["lo", "tnet0"]
    ''')
    run_inner("-q").assert_outcomes(passed=3)
    assert containers_left() == []
    assert processes_with("tnet0") == [], "a pasta outlived its isolated test"


def test_hook_adjusts_isolated_spec(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makeconftest('''
        import dataclasses

        def pytest_sandbox_container_spec(item, spec):
            return dataclasses.replace(spec, env=spec.env + ("FROM_HOOK=" + item.name,))
    ''')
    pytester.makepyfile(test_h='''
        import os, pytest

        @pytest.mark.container(isolate=True)
        def test_sees_hook_env():
            assert os.environ["FROM_HOOK"] == "test_sees_hook_env"
    ''')
    run_inner("-q").assert_outcomes(passed=1)


def test_isolated_failure_shows_diff_and_keeps(pytester: pytest.Pytester, run_inner,
                                               containers_left) -> None:
    pytester.makepyfile(test_k='''
        import pytest

        @pytest.mark.container(isolate=True, keep="failed")
        def test_changes_then_fails():
            with open("/etc/isolated-change", "w") as f:
                f.write("x")
            assert False, "on purpose"

        @pytest.mark.container(isolate=True, keep="failed")
        def test_passes():
            open("/etc/other", "w").close()
    ''')
    result = run_inner("-q")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*- sandbox diff of the isolated test body -*",
                                 "A /etc/isolated-change",
                                 "*- sandbox container kept -*",
                                 "*writable layer is kept in *"])
    assert len(containers_left()) == 1


def test_isolated_layer_is_in_memory_and_its_diff_still_shown(pytester: pytest.Pytester,
                                                             run_inner, containers_left) -> None:
    pytester.makepyfile(test_m='''
        import os
        import pytest

        def overlay_upper(mountpoint):
            for line in open("/proc/self/mountinfo"):
                pre, _, post = line.partition(" - ")
                if pre.split()[4] == mountpoint and post.startswith("overlay "):
                    opts = dict(o.partition("=")[::2] for o in post.split()[2].split(","))
                    return opts["upperdir"]

        @pytest.mark.container(isolate=True)
        def test_changes_then_fails():
            # the layer is a tmpfs of the container's (RootfsSpec.scratch), not the store's disk
            assert overlay_upper("/opt").endswith("/.sandbox-upper/opt")
            os.makedirs("/opt/made-here")
            with open("/opt/made-here/f", "w") as f:
                f.write("x")
            os.unlink("/etc/debian_version")
            assert False, "on purpose"

        @pytest.mark.container(isolate=True)
        def test_next_sees_none_of_it():
            assert not os.path.exists("/opt/made-here")
            assert os.path.exists("/etc/debian_version")
    ''')
    result = run_inner("-q")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*- sandbox diff of the isolated test body -*",
                                 "D /etc/debian_version",
                                 "A /opt/made-here",
                                 "A /opt/made-here/f"])
    assert containers_left() == []


@pytest.mark.slow
def test_isolate_in_an_image(pytester: pytest.Pytester, run_inner, tmp_path) -> None:
    """With image=, the body sees the image's root; the interpreter's paths are bound in."""
    import sys as _sys
    from pathlib import Path

    from imagekit import busybox_path

    if not (busybox_path() is not None):
        pytest.skip("needs busybox-static for a test image")
    _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from imagekit import make_busybox_tar

    tar = make_busybox_tar(tmp_path / "bb.tar", tmp_path)
    pytester.makeconftest(f'''
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def image(sandbox):
            sandbox.import_rootfs({str(tar)!r}, "bb-test:1")
    ''')
    pytester.makepyfile(test_img='''
        import os, pytest

        @pytest.fixture
        def image_ready(image):
            pass

        @pytest.mark.container(isolate=True, image="bb-test:1")
        def test_in_busybox(image_ready):
            assert os.path.exists("/bin/busybox")
            assert not os.path.exists("/etc/debian_version")
            import json, textwrap   # the interpreter's library paths are bound in
            assert json.loads("[1]") == [1]
    ''')
    run_inner("-q").assert_outcomes(passed=1)


@pytest.mark.slow
def test_images_imported_once_under_xdist(pytester: pytest.Pytester, run_inner,
                                          tmp_path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "name").write_text("tiny\n")
    log = tmp_path / "imports.log"
    pytester.makeconftest(f'''
        import pytest
        from sandbox.images import ImageStore

        _orig = ImageStore.import_rootfs

        def _counting(self, *args, **kwargs):
            with open({str(log)!r}, "a") as f:
                f.write("import\\n")
            return _orig(self, *args, **kwargs)

        ImageStore.import_rootfs = _counting
    ''')
    pytester.makepyfile(test_once=f'''
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_uses_image(n, sandbox):
            image = sandbox.import_rootfs({str(rootfs)!r}, "tiny:1")
            assert "tiny:1" in " ".join(image.names) or image.id
    ''')
    run_inner("-n", "2", "-q").assert_outcomes(passed=4)
    assert log.read_text().count("import") == 1
