"""sandbox._json gives what the json module gives, for what the engine writes and reads."""

from __future__ import annotations

import json
import math

import pytest

from sandbox import _json

SAMPLES = [
    {}, [], "", 0, -1, 1.5, 1e100, True, False, None, "é ✓ \x00 \" \\ \n \ud800",
    {"b": 1, "a": [1, 2.25, {"x": None}], "ü": "ß", "nested": {"z": [[], {}]}},
    [1, "two", 3.0, [4, [5]], {"six": 6}], 10**30, -0.0,
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_dumps_and_loads_match_the_json_module(obj: object) -> None:
    for sort_keys in (False, True):
        assert _json.dumps(obj, sort_keys=sort_keys) == json.dumps(obj, sort_keys=sort_keys)
    text = json.dumps(obj, indent=1)
    assert _json.loads(text) == json.loads(text)
    assert _json.loads(text.encode()) == json.loads(text.encode())
    assert _json.dumps(obj, indent=1, sort_keys=True) == json.dumps(obj, indent=1,
                                                                    sort_keys=True)


def test_special_floats_round_trip() -> None:
    out = _json.dumps([math.inf, -math.inf, math.nan])
    assert out == "[Infinity, -Infinity, NaN]"
    back = _json.loads(out)
    assert back[0] == math.inf and back[1] == -math.inf and math.isnan(back[2])


@pytest.mark.parametrize("bad", ["", "   ", "{", "[1,]", "{} x", "nul", '{"a" 1}', "\ufeff{}"])
def test_bad_input_is_a_value_error_as_with_json(bad: str) -> None:
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        _json.loads(bad)


def test_unserializable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        _json.dumps({"s": {1}})


def test_utf8_bom_bytes_are_accepted_as_json_accepts_them() -> None:
    assert _json.loads(b"\xef\xbb\xbf{\"a\": 1}") == json.loads(b"\xef\xbb\xbf{\"a\": 1}")
