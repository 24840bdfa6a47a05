"""The ``container`` fixture starts the next test's container while the current test runs."""

from __future__ import annotations

from datetime import UTC

import pytest

pytestmark = [pytest.mark.requires_userns, pytest.mark.requires_lifecycle]

AHEAD = r'''
import json, os, time
import pytest

MARKS = os.environ["AHEAD_MARKS"]

def test_first(container):
    time.sleep(0.5)  # the next test's container starts meanwhile
    with open(MARKS, "w") as f:
        json.dump({"first_body_end": time.time(), "first": container.id}, f)

def test_second(container):
    with open(MARKS) as f:
        marks = json.load(f)
    marks["second_setup_done"] = time.time()
    marks["second"] = container.id
    marks["second_running_since"] = container.inspect()["State"]["StartedAt"]
    with open(MARKS, "w") as f:
        json.dump(marks, f)
    assert container.id != marks["first"]
    assert container.run(["test", "-e", "/etc/from-first"]).returncode == 1
'''


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    head, _, frac = rfc3339.rstrip("Z").partition(".")
    stamp = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return stamp.timestamp() + float(f"0.{frac or 0}")


def test_the_next_container_runs_before_its_test_starts(pytester: pytest.Pytester, run_inner,
                                                        containers_left, tmp_path,
                                                        monkeypatch) -> None:
    import json

    marks = tmp_path / "marks.json"
    monkeypatch.setenv("AHEAD_MARKS", str(marks))
    pytester.makepyfile(test_ahead=AHEAD)
    run_inner("-q", "-p", "no:randomly").assert_outcomes(passed=2)
    m = json.loads(marks.read_text())
    # the second test's container was running before the first test's body ended
    assert _epoch(m["second_running_since"]) < m["first_body_end"]
    assert containers_left() == []


SKIPPED_NEXT = r'''
import pytest

def test_one(container):
    pass

@pytest.mark.skip(reason="never runs")
def test_two(container):
    pass

@pytest.mark.container(image="no-such-image:1")
def test_three(container):
    pass

def test_four(container):
    assert container.run(["true"]).returncode == 0
'''


def test_a_container_started_for_a_skipped_test_is_removed(pytester: pytest.Pytester, run_inner,
                                                           containers_left) -> None:
    """A test that never takes its container (skipped) leaves nothing behind; a test whose
    container cannot start ahead still gets its own one-line error at its setup."""
    pytester.makepyfile(test_skip=SKIPPED_NEXT)
    result = run_inner("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=2, skipped=1, errors=1)
    result.stdout.fnmatch_lines(["*sandbox: start no-such-image:1: unable to find image*"])
    assert containers_left() == []


def test_ctrl_c_with_a_container_started_ahead_leaves_nothing(pytester: pytest.Pytester,
                                                              run_inner,
                                                              containers_left) -> None:
    pytester.makepyfile(test_stop='''
        def test_one(container):
            raise KeyboardInterrupt

        def test_two(container):
            pass
    ''')
    result = run_inner("-q", "-p", "no:randomly")
    assert result.ret == 2
    assert containers_left() == []


ISOLATED_AHEAD = r'''
import os, time
import pytest

def _uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])

@pytest.mark.container(isolate=True)
def test_first(tmp_path_factory):
    time.sleep(0.5)  # the next test's container is set up meanwhile
    (tmp_path_factory.getbasetemp() / "first_end").write_text(str(_uptime()))

def _made_during_first(tmp_path_factory):
    first_end = float((tmp_path_factory.getbasetemp() / "first_end").read_text())
    with open("/proc/1/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    assert started < first_end, "the container was made after the first test ended"

@pytest.mark.container(isolate=True)
def test_second(tmp_path_factory):
    _made_during_first(tmp_path_factory)
    assert os.getpid() != 1 and not os.path.exists("/etc/from-first")
    open("/etc/from-second", "w").close()

@pytest.mark.container(isolate=True)
def test_second_too(tmp_path_factory):
    _made_during_first(tmp_path_factory)  # two tests ahead: their set-ups overlap
    assert not os.path.exists("/etc/from-second")

@pytest.mark.container(isolate=True, timeout=2)
def test_third():
    open("/etc/from-third", "w").close()
    time.sleep(30)

@pytest.mark.container(isolate=True)
def test_fourth():
    for name in ("from-second", "from-third"):  # a fresh writable layer every time
        assert not os.path.exists("/etc/" + name)

@pytest.mark.skip(reason="never runs")
@pytest.mark.container(isolate=True)
def test_fifth():
    pass

'''


def test_isolated_tests_run_in_containers_set_up_ahead(pytester: pytest.Pytester, run_inner,
                                                      containers_left, store_root) -> None:
    """Each isolated test's container is set up while the previous test runs, is fresh, and
    is gone afterwards (also the one set up for a test that is skipped, and after a timeout)."""
    from procs import processes_with

    pytester.makepyfile(test_iso_ahead=ISOLATED_AHEAD)
    result = run_inner("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=4, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*timed out after 2s*"])
    assert containers_left() == []
    assert processes_with(f"--sandbox-root={store_root}") == []  # no helper, holder or body
