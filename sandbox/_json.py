"""JSON for the start-up path: the standard library's C scanner and encoder, without ``json``.

``import json`` costs a ``sandbox run`` about a millisecond and a half, most of it the regular
expressions its pure-Python fallbacks compile and the ``re``/``enum`` machinery behind them.
``_json`` (the C accelerator ``json`` itself uses) needs none of that. Same output as
``json.dumps(obj, ensure_ascii=True)`` compact or with ``indent``/``sort_keys`` (indent is
handed to ``json``, imported then: no run path writes indented JSON); same errors
(``ValueError``; the scanner's own ``json.JSONDecodeError`` where it raises one).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = ["loads", "dumps", "load", "dump"]


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed as in C
_WS = " \t\n\r"


def loads(s: str | bytes | bytearray) -> Any:
    if not isinstance(s, str):
        s = bytes(s).decode("utf-8-sig" if s[:3] == b"\xef\xbb\xbf" else "utf-8")
    start = len(s) - len(s.lstrip(_WS))
    try:
        obj, end = _scan(s, start)
    except StopIteration as err:
        raise ValueError(f"Expecting value: char {err.value}") from None
    if s[end:].strip(_WS):
        raise ValueError(f"Extra data: char {end}")
    return obj


def load(f: IO[str] | IO[bytes]) -> Any:
    return loads(f.read())


def _default(o: object) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = False,
          separators: tuple[str, str] | None = None) -> str:
    if indent is not None:
        import json

        return json.dumps(obj, indent=indent, sort_keys=sort_keys, separators=separators)
    item_sep, key_sep = separators or (", ", ": ")
    encode = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None, key_sep,
                                item_sep, sort_keys, False, True)
    return "".join(encode(obj, 0))


def dump(obj: Any, f: IO[str], *, indent: int | None = None, sort_keys: bool = False) -> None:
    f.write(dumps(obj, indent=indent, sort_keys=sort_keys))
