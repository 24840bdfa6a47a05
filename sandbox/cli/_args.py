"""Docker-flavoured command-line parsing: errors are one line and exit 125, not a usage dump.

The subset of argparse's API our commands use (``add_argument`` with ``store``, ``store_true``,
``append``, ``count``, ``help``; ``nargs`` ``?``/``*``/``+``/``REMAINDER``; ``type``; ``choices``;
``default``; ``dest``; ``metavar``), parsed the way Docker's pflag does: ``--flag=value``,
``--flag value``, ``-f value``, ``-fvalue``, combined short booleans (``-it``), ``--`` ends the
flags, and flags may follow positionals until a ``REMAINDER`` positional starts (``run IMAGE
CMD...``). It is ours rather than argparse because ``sandbox run`` pays for every import:
argparse with ``re`` and ``gettext`` costs several milliseconds of a start-up measured in tens.
"""

from __future__ import annotations

import sys

from sandbox.errors import SandboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, BinaryIO, NoReturn

__all__ = ["Parser", "parse", "REMAINDER", "Namespace", "write_output"]

REMAINDER = "..."  # argparse.REMAINDER's value, so either constant works


class Namespace:
    """The parsed flags as attributes (``argparse.Namespace``): a class of its own, where
    ``types.SimpleNamespace`` would be an import of every command."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...  # any flag, as SimpleNamespace's stub

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and vars(self) == vars(other)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"Namespace({inner})"


class _Arg:
    __slots__ = ("flags", "dest", "action", "nargs", "default", "type", "choices", "help",
                 "metavar", "required", "const")

    def __init__(self, flags: tuple[str, ...], kw: dict[str, Any]) -> None:
        unknown = set(kw) - {"action", "nargs", "default", "type", "choices", "help", "metavar",
                             "dest", "required", "const"}
        if unknown:
            raise TypeError(f"unsupported add_argument options {sorted(unknown)}")
        self.flags = flags
        self.action = kw.get("action") or "store"
        if self.action not in ("store", "store_true", "store_false", "append", "count", "help",
                               "store_const"):
            raise TypeError(f"unsupported action {self.action!r}")
        positional = not flags[0].startswith("-")
        longest = max(flags, key=len)
        self.dest = kw.get("dest") or (flags[0] if positional else
                                       longest.lstrip("-").replace("-", "_"))
        self.nargs = kw.get("nargs")
        default = kw.get("default")
        if self.action == "store_true" and default is None:
            default = False
        elif self.action == "store_false" and default is None:
            default = True
        elif self.action == "count" and default is None:
            default = 0
        elif positional and self.nargs in ("*", "+", REMAINDER) and default is None:
            default = []
        self.default = default
        self.type: Callable[[str], Any] | None = kw.get("type")
        self.choices = kw.get("choices")
        self.help = kw.get("help") or ""
        self.metavar = kw.get("metavar")
        self.required = bool(kw.get("required"))
        self.const = kw.get("const")

    @property
    def takes_value(self) -> bool:
        return self.action in ("store", "append")


class Parser:
    """A command's flags and positionals."""

    def __init__(self, prog: str, description: str, usage: str | None = None,
                 *, short_help: bool = True) -> None:
        self.prog = f"sandbox {prog}"
        self.description = description
        self.usage = usage
        self._options: dict[str, _Arg] = {}
        self._ordered: list[_Arg] = []
        self._positionals: list[_Arg] = []
        flags = ("-h", "--help") if short_help else ("--help",)
        self.add_argument(*flags, action="help", help="Show this help")

    def add_argument(self, *flags: str, **kw: Any) -> _Arg:
        arg = _Arg(flags, kw)
        if flags[0].startswith("-"):
            for flag in flags:
                self._options[flag] = arg
            self._ordered.append(arg)
        else:
            self._positionals.append(arg)
        return arg

    # -- errors and help ----------------------------------------------------------------------
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see '{self.prog} --help'")

    def format_help(self) -> str:
        usage = self.usage or f"{self.prog} [OPTIONS]" + "".join(
            f" {p.dest.upper()}" for p in self._positionals)
        lines = [f"Usage:  {usage}", "", self.description, ""]
        if self._ordered:
            lines.append("Options:")
            rows = []
            for arg in self._ordered:
                names = ", ".join(arg.flags)
                if arg.takes_value:
                    names += f" {arg.metavar or arg.dest.upper()}"
                rows.append((names, arg.help))
            width = min(max(len(r[0]) for r in rows), 34)
            lines += [f"  {n:<{width}}  {h}" for n, h in rows]
        return "\n".join(lines) + "\n"

    def print_help(self) -> None:
        sys.stdout.write(self.format_help())

    # -- parsing ------------------------------------------------------------------------------
    def _convert(self, arg: _Arg, value: str, shown: str) -> Any:
        if arg.type is not None:
            try:
                value = arg.type(value)
            except (TypeError, ValueError):
                self.error(f'invalid argument "{value}" for "{shown}" flag')
        if arg.choices is not None and value not in arg.choices:
            choices = ", ".join(map(str, arg.choices))
            self.error(f'invalid argument "{value}" for "{shown}" flag (choose from {choices})')
        return value

    def _apply(self, ns: dict[str, Any], arg: _Arg, value: str | None, shown: str) -> None:
        action = arg.action
        if action == "help":
            self.print_help()
            raise SystemExit(0)
        if action == "store_true":
            ns[arg.dest] = True
        elif action == "store_false":
            ns[arg.dest] = False
        elif action == "store_const":
            ns[arg.dest] = arg.const
        elif action == "count":
            ns[arg.dest] = ns[arg.dest] + 1
        elif action == "append":
            ns[arg.dest] = [*(ns[arg.dest] or []), self._convert(arg, value or "", shown)]
        else:
            ns[arg.dest] = self._convert(arg, value or "", shown)

    def _bool_value(self, ns: dict[str, Any], arg: _Arg, value: str, name: str) -> None:
        """``--flag=false`` / ``-f=true`` of a boolean flag (pflag's ``ParseBool`` values)."""
        truth = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
                 "0": False, "f": False, "F": False, "false": False, "FALSE": False,
                 "False": False}
        if arg.action not in ("store_true", "store_false") or value not in truth:
            self.error(f'invalid argument "{value}" for "{name}" flag'
                       if arg.action in ("store_true", "store_false")
                       else f'flag "{name}" does not take a value')
        ns[arg.dest] = truth[value] == (arg.action == "store_true")

    def _short_cluster(self, token: str, rest: list[str], ns: dict[str, Any]) -> None:
        i = 1
        while i < len(token):
            flag = "-" + token[i]
            arg = self._options.get(flag)
            if arg is None:
                self.error(f"unknown shorthand flag: '{token[i]}' in {token}")
            if not arg.takes_value and token[i + 1:i + 2] == "=":  # -H=false, as pflag
                self._bool_value(ns, arg, token[i + 2:], flag)
                return
            if arg.takes_value:
                value = token[i + 1:]
                if value.startswith("="):  # -e=X is -e X, as pflag
                    value = value[1:]
                if not value:
                    if not rest:
                        self.error(f"flag needs an argument: '{token[i]}' in {flag}")
                    value = rest.pop(0)
                self._apply(ns, arg, value, flag)
                return
            self._apply(ns, arg, None, flag)
            i += 1

    def parse_args(self, argv: Sequence[str] | None = None) -> Namespace:
        rest = list(sys.argv[1:] if argv is None else argv)
        ns: dict[str, Any] = {a.dest: a.default for a in [*self._ordered, *self._positionals]}
        positionals: list[str] = []
        remainder_at = self._remainder_index()
        while rest:
            token = rest.pop(0)
            if remainder_at is not None and len(positionals) >= remainder_at:
                positionals.append(token)
                positionals += rest
                break
            if token == "--":
                positionals += rest
                break
            if token.startswith("--") and len(token) > 2:
                name, eq, value = token.partition("=")
                arg = self._options.get(name)
                if arg is None:
                    self.error(f"unknown flag: {name}")
                if arg.takes_value and not eq:
                    if not rest:
                        self.error(f"flag needs an argument: {name}")
                    value = rest.pop(0)
                elif not arg.takes_value and eq:
                    self._bool_value(ns, arg, value, name)
                    continue
                self._apply(ns, arg, value if arg.takes_value else None, name)
            elif token.startswith("-") and len(token) > 1:
                self._short_cluster(token, rest, ns)
            else:
                positionals.append(token)
        self._assign_positionals(ns, positionals)
        for arg in self._ordered:
            if arg.required and ns[arg.dest] in (None, []):
                self.error(f"required flag {arg.flags[-1]} not set")
        return Namespace(**ns)

    def _remainder_index(self) -> int | None:
        count = 0
        for arg in self._positionals:
            if arg.nargs == REMAINDER:
                return count
            if arg.nargs in (None, 1):
                count += 1
            else:
                return None
        return None

    def _assign_positionals(self, ns: dict[str, Any], values: list[str]) -> None:
        specs = self._positionals
        fixed = sum(1 for a in specs if a.nargs in (None, 1, "+"))
        for index, arg in enumerate(specs):
            later_fixed = sum(1 for a in specs[index + 1:] if a.nargs in (None, 1, "+"))
            if arg.nargs in (None, 1):
                if not values:
                    self.error(f'"{self.prog}" requires at least {fixed} argument'
                               f'{"s" if fixed > 1 else ""}')
                ns[arg.dest] = self._convert(arg, values.pop(0), arg.dest)
            elif arg.nargs == "?":
                if len(values) > later_fixed:
                    ns[arg.dest] = self._convert(arg, values.pop(0), arg.dest)
            elif arg.nargs in ("*", "+", REMAINDER):
                take = max(0, len(values) - later_fixed)
                if arg.nargs == "+" and take == 0:
                    self.error(f'"{self.prog}" requires at least {fixed} argument'
                               f'{"s" if fixed > 1 else ""}')
                ns[arg.dest] = [self._convert(arg, v, arg.dest) for v in values[:take]]
                del values[:take]
            elif isinstance(arg.nargs, int):
                if len(values) < arg.nargs:
                    self.error(f'"{self.prog}" requires {arg.nargs} {arg.dest} arguments')
                ns[arg.dest] = [self._convert(arg, v, arg.dest) for v in values[:arg.nargs]]
                del values[:arg.nargs]
        if values:
            self.error(f"unexpected argument{'s' if len(values) > 1 else ''}: "
                       + " ".join(values))


def parse(parser: Parser, argv: list[str]) -> Namespace:
    return parser.parse_args(argv)


def write_output(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``-o FILE`` (``save``, ``export``): ``write`` fills a temp file beside ``path``, renamed
    into place once whole; nothing is left when it fails, Ctrl-C included. A place that cannot
    be written is a one-line error naming ``path``."""
    import os

    from sandbox.store import unlink_missing_ok

    target = os.path.abspath(path)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        out = open(tmp, "wb")  # noqa: SIM115 - closed below, before the rename
    except OSError as exc:
        raise SandboxError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with out:
            write(out)
        os.replace(tmp, target)
    except BaseException:
        unlink_missing_ok(tmp)
        raise
