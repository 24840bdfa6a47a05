"""Docker's ``--format``: the subset of Go's text/template that Docker users write, one engine
for every command that takes a template.

Actions: ``{{.A.B}}``, ``{{.}}``, ``{{$}}`` and variables, string and number literals,
pipelines (``{{.Id | printf "%.12s"}}``), ``if``/``else``/``end``, ``range`` (with
``$k, $v :=``), ``with``, and the ``{{-``/``-}}`` trim markers. Functions: Go's ``index``,
``len``, ``print``, ``println``, ``printf``, ``not``, ``and``, ``or``, ``eq``, ``ne``, and
Docker's ``json``, ``join``, ``split``, ``upper``, ``lower``, ``title``, ``truncate``, ``pad``.
Values print as Go prints them (``[a b]``, ``map[k:v]``, ``true``); a missing key prints
``<no value>`` and a null one ``<nil>``. Mistakes are one-line ``UsageError``s, as Go's
"template: ..." errors.
"""

from __future__ import annotations

import json

from sandbox.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["render", "go_string"]


class _Missing:
    """The value of a key that is not there (Go's invalid reflect.Value)."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()

# Fields of Docker's Config whose Go types are slices or maps: a nil one prints as the empty
# value of its type (``docker inspect -f '{{.Config.Entrypoint}}'`` of an image without one
# prints "[]"); ``json`` still shows the null.
_NIL_AS = {"cmd": "[]", "entrypoint": "[]", "env": "[]", "shell": "[]", "onbuild": "[]",
           "volumes": "map[]", "labels": "map[]", "exposedports": "map[]"}


def _fail(message: str) -> UsageError:
    return UsageError(f"template: {message}", hint="see the fields in `--format json` output")


def go_string(value: Any) -> str:
    """``value`` as Go's fmt prints it."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _truth(value: Any) -> bool:
    return value is not MISSING and bool(value)


# -- parsing ----------------------------------------------------------------------------------

def _split_actions(fmt: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) in order, trim markers applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    while True:
        start = fmt.find("{{", pos)
        if start < 0:
            out.append(("text", fmt[pos:]))
            return out
        text = fmt[pos:start]
        end = fmt.find("}}", start + 2)
        if end < 0:
            raise _fail("unclosed action")
        inner = fmt[start + 2:end]
        if inner.startswith("- ") or inner == "-":
            text = text.rstrip()
            inner = inner[1:]
        if inner.endswith(" -"):
            inner = inner[:-1]
            pos = end + 2
            while pos < len(fmt) and fmt[pos] in " \t\r\n":
                pos += 1
        else:
            pos = end + 2
        out.append(("text", text))
        out.append(("action", inner.strip()))


def _tokens(text: str) -> list[str]:
    """An action's words: quoted strings (kept with their quotes), ``|``, ``:=``, ``,`` and
    the rest split on spaces."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "\"`":
            j = i + 1
            while j < len(text) and text[j] != ch:
                j += 2 if ch == '"' and text[j] == "\\" else 1
            if j >= len(text):
                raise _fail(f"unterminated quoted string in {text!r}")
            out.append(text[i:j + 1])
            i = j + 1
        elif ch == ")" and text.startswith(").", i):  # a field of the group's value
            j = i + 1
            while j < len(text) and (text[j].isalnum() or text[j] in "._"):
                j += 1
            out.append(text[i:j])
            i = j
        elif ch in "|,()":
            out.append(ch)
            i += 1
        elif text.startswith(":=", i):
            out.append(":=")
            i += 2
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "|,\"`()" \
                    and not text.startswith(":=", j):
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _parse(fmt: str) -> list[Any]:
    """The template as a tree: strings, ("pipe", words), and ("if"|"range"|"with", decl,
    words, body, else_body)."""
    root: list[Any] = []
    stack: list[tuple[list[Any], Any]] = []  # (list being filled, the block node or None)
    current = root
    for kind, value in _split_actions(fmt):
        if kind == "text":
            if value:
                current.append(value)
            continue
        words = _tokens(value)
        if not words or words[0].startswith("/*"):
            continue  # an empty action or a comment
        head = words[0]
        if head in ("if", "range", "with"):
            decl: list[str] = []
            rest = words[1:]
            if ":=" in rest:
                at = rest.index(":=")
                decl, rest = [w for w in rest[:at] if w != ","], rest[at + 1:]
            if not rest:
                raise _fail(f"missing value for {head}")
            node: list[Any] = [head, decl, rest, [], None]
            current.append(node)
            stack.append((current, node))
            current = node[3]
        elif head == "else":
            if not stack or stack[-1][1][4] is not None:
                raise _fail("unexpected {{else}}")
            node = stack[-1][1]
            node[4] = []
            current = node[4]
        elif head == "end":
            if not stack:
                raise _fail("unexpected {{end}}")
            current, _ = stack.pop()
        else:
            current.append(("pipe", words))
    if stack:
        raise _fail(f"unexpected EOF: {{{{{stack[-1][1][0]}}}}} has no {{{{end}}}}")
    return root


# -- evaluation -------------------------------------------------------------------------------

class _Scope:
    __slots__ = ("root", "dot", "vars", "strict")

    def __init__(self, root: Any, dot: Any, variables: dict[str, Any], strict: bool) -> None:
        self.root, self.dot, self.vars, self.strict = root, dot, variables, strict


def _field(scope: _Scope, base: Any, path: str) -> Any:
    value = base
    parts = [p for p in path.split(".") if p]
    for n, part in enumerate(parts):
        if value is MISSING or value is None:
            return MISSING
        if isinstance(value, dict):
            if part in value:
                value = value[part]
                continue
            low = {k.lower(): k for k in value if isinstance(k, str)}
            if part.lower() in low:
                value = value[low[part.lower()]]
                continue
            if scope.strict and value is scope.root and n == 0:
                raise _fail(f"can't evaluate field {part}")
            return MISSING
        raise _fail(f"can't evaluate field {part} in a {type(value).__name__}")
    return value


def _literal(word: str) -> Any:
    if word[0] == '"':
        try:
            return json.loads(word)
        except ValueError:
            raise _fail(f"bad string {word}") from None
    if word[0] == "`":
        return word[1:-1]
    if word in ("true", "false"):
        return word == "true"
    if word == "nil":
        return None
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        raise _fail(f'function "{word}" not defined') from None


def _operand(scope: _Scope, word: Any) -> Any:
    if isinstance(word, tuple):  # ("group", words, chain)
        value = _pipeline(scope, word[1])
        return _field(scope, value, word[2]) if word[2] else value
    if word == ".":
        return scope.dot
    if word.startswith("."):
        return _field(scope, scope.dot, word)
    if word.startswith("$"):
        name, dot, path = word.partition(".")
        if name == "$":
            base = scope.root
        elif name in scope.vars:
            base = scope.vars[name]
        else:
            raise _fail(f"undefined variable: {name}")
        return _field(scope, base, path) if dot else base
    return _literal(word)


def _want(name: str, args: list[Any], low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(args) <= (high if high >= 0 else len(args)):
        want = str(low) if low == high else f"at least {low}"
        raise _fail(f"wrong number of args for {name}: want {want} got {len(args)}")


def _printf(args: list[Any]) -> str:
    fmt, values = str(args[0]), list(args[1:])
    out, i = [], 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%" or i + 1 >= len(fmt):
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < len(fmt) and fmt[j] in "-+ #0123456789.":
            j += 1
        if j >= len(fmt):
            out.append(fmt[i:])
            break
        verb, spec = fmt[j], fmt[i + 1:j]
        i = j + 1
        if verb == "%":
            out.append("%")
            continue
        if not values:
            out.append(f"%!{verb}(MISSING)")
            continue
        value = values.pop(0)
        try:
            if verb in "dxXo" and isinstance(value, int | float):
                out.append(f"%{spec}{verb}" % int(value))
            elif verb in "feEgG" and isinstance(value, int | float):
                out.append(f"%{spec}{verb}" % float(value))
            elif verb == "q":
                out.append(json.dumps(go_string(value)))
            else:
                out.append(f"%{spec}s" % go_string(value))
        except (TypeError, ValueError):
            out.append(f"%!{verb}({go_string(value)})")
    return "".join(out)


def _index(args: list[Any]) -> Any:
    value = args[0]
    for key in args[1:]:
        if isinstance(value, dict):
            value = value.get(key, MISSING) if not isinstance(key, int) else \
                value.get(str(key), MISSING)
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or not -1 < key < len(value):
                raise _fail(f"error calling index: index out of range: {go_string(key)}")
            value = value[key]
        else:
            raise _fail(f"error calling index: can't index item of type "
                        f"{type(value).__name__}")
    return value


def _call(name: str, args: list[Any]) -> Any:
    if name == "json":
        _want(name, args, 1)
        value = args[0]
        return json.dumps(None if value is MISSING else value, separators=(",", ":"))
    if name == "join":
        _want(name, args, 2)
        seq = args[0] if isinstance(args[0], list | tuple) else []
        return str(args[1]).join(go_string(v) for v in seq)
    if name == "split":
        _want(name, args, 2)
        return str(args[0]).split(str(args[1]))
    if name in ("upper", "lower", "title"):
        _want(name, args, 1)
        text = go_string(args[0])
        return text.upper() if name == "upper" else text.lower() if name == "lower" else \
            " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    if name == "len":
        _want(name, args, 1)
        if not isinstance(args[0], list | tuple | dict | str):
            raise _fail(f"error calling len: len of type {type(args[0]).__name__}")
        return len(args[0])
    if name == "index":
        _want(name, args, 1, -1)
        return _index(args)
    if name == "truncate":
        _want(name, args, 2)
        return go_string(args[0])[:int(args[1])]
    if name == "pad":
        _want(name, args, 3)
        return " " * int(args[1]) + go_string(args[0]) + " " * int(args[2])
    if name == "print":
        return "".join(go_string(v) for v in args)
    if name == "println":
        return " ".join(go_string(v) for v in args) + "\n"
    if name == "printf":
        _want(name, args, 1, -1)
        return _printf(args)
    if name == "not":
        _want(name, args, 1)
        return not _truth(args[0])
    if name in ("and", "or"):
        _want(name, args, 1, -1)
        for value in args:
            if _truth(value) != (name == "and"):
                return value
        return args[-1]
    if name in ("eq", "ne"):
        _want(name, args, 2, -1)
        same = any(args[0] == other for other in args[1:])
        return same if name == "eq" else not same
    raise _fail(f'function "{name}" not defined')


def _nest(words: list[Any]) -> list[Any]:
    """``(`` ... ``)`` groups as ("group", words, field chain after the ``)``)."""
    out: list[Any] = []
    stack: list[list[Any]] = []
    for word in words:
        if word == "(":
            stack.append(out)
            out = []
        elif isinstance(word, str) and word.startswith(")"):
            if not stack:
                raise _fail("unexpected right paren")
            group = ("group", out, word[1:])
            out = stack.pop()
            out.append(group)
        else:
            out.append(word)
    if stack:
        raise _fail("unclosed left paren")
    return out


def _pipeline(scope: _Scope, words: list[Any]) -> Any:
    if any(isinstance(w, str) and w[:1] in "()" for w in words):
        words = _nest(words)
    commands: list[list[Any]] = [[]]
    for word in words:
        if word == "|":
            commands.append([])
        else:
            commands[-1].append(word)
    value: Any = MISSING
    for n, command in enumerate(commands):
        if not command:
            raise _fail("missing command in pipeline")
        head, rest = command[0], command[1:]
        if isinstance(head, tuple) or head[0] in ".$\"`" or head[0].isdigit() \
                or head[0] == "-" or head in ("true", "false", "nil"):
            if rest:
                raise _fail(f"can't give argument to non-function {head}")
            if n:
                raise _fail(f"non executable command in pipeline stage {n + 1}")
            value = _operand(scope, head)
            continue
        args = [_operand(scope, w) for w in rest if w != ","]
        if n:
            args.append(value)
        value = _call(head, args)
    return value


def _print(value: Any, path_word: str) -> str:
    if value is None and path_word.startswith("."):
        return _NIL_AS.get(path_word.rpartition(".")[2].lower(), "<nil>")
    if value is MISSING and path_word.startswith("."):
        return _NIL_AS.get(path_word.rpartition(".")[2].lower(), "<no value>")
    return go_string(value)


def _execute(nodes: list[Any], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "pipe":
            words = node[1]
            value = _pipeline(scope, words)
            out.append(_print(value, words[0] if len(words) == 1 and isinstance(words[0], str)
                              else ""))
        else:
            kind, decl, words, body, other = node
            value = _pipeline(scope, words)
            if kind == "if":
                _execute(body if _truth(value) else other or [], scope, out)
            elif kind == "with":
                if _truth(value):
                    _execute(body, _Scope(scope.root, value, {**scope.vars, **(
                        {decl[-1]: value} if decl else {})}, scope.strict), out)
                else:
                    _execute(other or [], scope, out)
            else:
                items: list[tuple[Any, Any]]
                if isinstance(value, dict):
                    items = sorted(value.items())
                elif isinstance(value, list | tuple):
                    items = list(enumerate(value))
                elif value is MISSING or value is None:
                    items = []
                else:
                    raise _fail(f"range can't iterate over {go_string(value)}")
                if not items:
                    _execute(other or [], scope, out)
                for key, item in items:
                    variables = dict(scope.vars)
                    if len(decl) == 2:
                        variables[decl[0]], variables[decl[1]] = key, item
                    elif decl:
                        variables[decl[0]] = item
                    _execute(body, _Scope(scope.root, item, variables, scope.strict), out)


def render(fmt: str, dot: Any, *, strict: bool = False) -> str:
    """``fmt`` executed on ``dot``. ``\\t`` and ``\\n`` in ``fmt`` are a tab and a newline, as
    Docker's formatter makes them. ``strict``: a field missing from ``dot`` itself is an error
    (Docker's rows are Go structs: ``{{.Bogus}}`` does not evaluate), where a key missing
    further down prints ``<no value>`` as a Go map's does."""
    nodes = _parse(fmt.replace("\\t", "\t").replace("\\n", "\n"))
    out: list[str] = []
    _execute(nodes, _Scope(dot, dot, {"$": dot}, strict), out)
    return "".join(out)
