"""The json-file log reader: history then follow, with nothing lost in between."""

from __future__ import annotations

from pathlib import Path

from sandbox._logs import LogWriter, read_log


def test_follow_keeps_lines_written_after_the_history_was_read(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    w = LogWriter(str(log))
    w.write("stdout", b"first\n")
    alive = [True]
    lines = read_log(str(log), follow=True, running=lambda: alive[0])
    assert next(lines) == ("stdout", b"first\n")  # the history is read; follow not yet begun
    w.write("stdout", b"second\n")  # lands in the gap `start -a` used to lose
    w.write("stderr", b"third\n")
    assert next(lines) == ("stdout", b"second\n")
    assert next(lines) == ("stderr", b"third\n")
    alive[0] = False
    w.close()
    assert list(lines) == []


def test_follow_completes_a_record_cut_at_the_end_of_the_history(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    w = LogWriter(str(log))
    w.write("stdout", b"whole\n")
    w.close()
    rec = b'{"log": "split\\n", "stream": "stdout", "time": "2026-01-01T00:00:00.000000000Z"}\n'
    with open(log, "ab") as f:
        f.write(rec[:20])  # the monitor is half-way through writing a record
    alive = [True]
    lines = read_log(str(log), follow=True, running=lambda: alive[0])
    assert next(lines) == ("stdout", b"whole\n")
    with open(log, "ab") as f:
        f.write(rec[20:])
    assert next(lines) == ("stdout", b"split\n")
    alive[0] = False
    assert list(lines) == []


def test_since_filters_the_history_and_the_follow(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    old = b'{"log": "old\\n", "stream": "stdout", "time": "2000-01-01T00:00:00.000000000Z"}\n'
    log.write_bytes(old)
    w = LogWriter(str(log))
    w.write("stdout", b"new\n")
    w.close()
    assert [ln for _, ln in read_log(str(log), since=946684801.0)] == [b"new\n"]
    assert [ln for _, ln in read_log(str(log))] == [b"old\n", b"new\n"]
