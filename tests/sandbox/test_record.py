"""sandbox._record: dataclass semantics without generated code."""

from __future__ import annotations

import pytest

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


def test_argument_errors_are_pythons_own() -> None:
    with pytest.raises(TypeError, match=r"Point.__init__\(\) missing required argument: 'x'"):
        Point(y=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 5 positional arguments but 6 were given"):
        Point(1, 2, [], "n", "extra")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)  # type: ignore[call-arg]
    assert Point(y=2, x=1) == Point(1, 2)
