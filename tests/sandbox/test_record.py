"""sandbox._record: dataclass semantics, and the generated __init__ code cached on disk."""

from __future__ import annotations

import marshal
import os
import sys
from pathlib import Path

import pytest

from sandbox import _record
from sandbox._record import FrozenInstanceError, asdict, field, fields, record, replace


@record
class Point:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    note: str = field(default="", compare=False)


def test_records_behave_like_frozen_dataclasses() -> None:
    p = Point(1, tags=["a"])
    assert (p.x, p.y, p.tags, p.note) == (1, 0, ["a"], "")
    assert Point(1).tags is not Point(1).tags  # a fresh default per instance
    assert p == Point(1, 0, ["a"], note="ignored in comparisons")
    assert replace(p, y=2) == Point(1, 2, ["a"])
    assert asdict(p) == {"x": 1, "y": 0, "tags": ["a"], "note": ""}
    assert fields(Point) == ("x", "y", "tags", "note")
    with pytest.raises(FrozenInstanceError):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="has no field 'z'"):
        replace(p, z=1)


def test_generated_init_code_is_cached_beside_the_byte_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "inits.marshal"
    monkeypatch.setattr(_record, "_CODE", {})
    monkeypatch.setattr(_record, "_CODE_FILE", str(cache))
    monkeypatch.setattr(sys, "flags", type("F", (), {"dont_write_bytecode": False})())
    src = "def __init__(self, a):\n _s(self, 'a', a)"
    code = _record._compiled(src)
    assert marshal.loads(cache.read_bytes()) == {src: code}
    monkeypatch.setattr(_record, "_CODE", None)  # a new process: loaded, not compiled
    monkeypatch.setattr(_record, "_CODE_FILE", "")
    monkeypatch.setattr(os.path, "dirname", lambda _p: str(tmp_path / "x"))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "__pycache__").mkdir()
    target = tmp_path / "x" / "__pycache__" / \
        f"_record_inits.{sys.implementation.cache_tag}.marshal"
    target.write_bytes(marshal.dumps({src: code}))
    monkeypatch.setattr(_record, "compile", lambda *a: pytest.fail("compiled again"),
                        raising=False)
    assert _record._compiled(src) == code


def test_a_corrupt_cache_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "__pycache__"
    bad.mkdir()
    (bad / f"_record_inits.{sys.implementation.cache_tag}.marshal").write_bytes(b"\x00garbage")
    monkeypatch.setattr(_record, "_CODE", None)
    monkeypatch.setattr(os.path, "dirname", lambda _p: str(tmp_path))
    src = "def __init__(self):\n pass"
    assert _record._compiled(src).co_filename == "<record __init__>"
