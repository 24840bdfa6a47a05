"""Frozen records for the start-up path: dataclass semantics without importing ``dataclasses``.

``sandbox run --rm IMAGE true`` pays for every import, and ``dataclasses`` pulls in ``inspect``
(ast, dis, tokenize): about 8 ms of a start-up measured in tens. ``@record`` builds the same
frozen, comparable classes from the annotations; type checkers see a dataclass
(``dataclass_transform``). ``replace``, ``asdict`` and ``fields`` work as ``dataclasses``' do.
Records are for the classes ``run`` touches (specs, plans, run options, images, states);
everything else uses ``dataclasses``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")

__all__ = ["record", "field", "replace", "asdict", "fields", "FrozenInstanceError"]

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Field:
    __slots__ = ("default", "factory", "compare")

    def __init__(self, default: Any, factory: Callable[[], Any] | None, compare: bool) -> None:
        self.default = default
        self.factory = factory
        self.compare = compare


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None,
          compare: bool = True, hash: bool | None = None) -> Any:  # noqa: A002 - as dataclasses
    """A field with a fresh default per instance, or left out of comparisons."""
    return _Field(default, default_factory, compare)


def _setattr(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _make(cls: type) -> type:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("__annotations__", {}):
            if name not in names and not name.startswith("_"):
                names.append(name)
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    compared = []
    for name in names:
        value = getattr(cls, name, _MISSING)
        spec = value if isinstance(value, _Field) else _Field(value, None, True)
        if isinstance(value, _Field) and name in cls.__dict__:
            delattr(cls, name)
        if spec.compare:
            compared.append(name)
        if spec.factory is not None:
            factories[name] = spec.factory
        elif spec.default is not _MISSING:
            defaults[name] = spec.default
    cls.__init__ = _make_init(cls.__qualname__, tuple(names), defaults, factories)  # type: ignore[misc]
    cls.__record_fields__ = tuple(names)  # type: ignore[attr-defined]
    cls.__record_compare__ = tuple(compared)  # type: ignore[attr-defined]
    cls.__setattr__ = _setattr  # type: ignore[assignment,method-assign]
    cls.__delattr__ = _delattr  # type: ignore[assignment,method-assign]
    cls.__eq__ = _eq  # type: ignore[assignment,method-assign]
    cls.__hash__ = _hash  # type: ignore[assignment,method-assign]
    cls.__repr__ = _repr  # type: ignore[assignment,method-assign]
    return cls


def _make_init(qualname: str, names: tuple[str, ...], defaults: dict[str, Any],
               factories: dict[str, Callable[[], Any]]) -> Callable[..., None]:
    """One ``__init__`` for every record, closed over its fields: no source generated and
    compiled per class, as ``dataclasses`` does (a dozen ``compile`` calls were 1-3 ms of every
    ``sandbox run``). Argument errors are the ``TypeError`` Python's own would be."""
    setter = object.__setattr__
    where = f"{qualname}.__init__()"

    def __init__(self: object, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        if len(args) > len(names):
            raise TypeError(f"{where} takes {len(names) + 1} positional arguments but "
                            f"{len(args) + 1} were given")
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{where} got multiple values for argument {name!r}")
            setter(self, name, value)
        for name in names[len(args):]:
            if name in kwargs:
                setter(self, name, kwargs.pop(name))
            elif name in defaults:
                setter(self, name, defaults[name])
            elif name in factories:
                setter(self, name, factories[name]())
            else:
                raise TypeError(f"{where} missing required argument: {name!r}")
        if kwargs:
            raise TypeError(f"{where} got an unexpected keyword argument {next(iter(kwargs))!r}")

    return __init__


def _key(obj: object) -> tuple[Any, ...]:
    return tuple(getattr(obj, n) for n in type(obj).__record_compare__)  # type: ignore[attr-defined]


def _eq(self: object, other: object) -> bool:
    if type(other) is not type(self):
        return NotImplemented  # type: ignore[no-any-return]
    same: bool = _key(self) == _key(other)
    return same


def _hash(self: object) -> int:
    return hash(tuple(v for v in _key(self) if not isinstance(v, (dict, list))))


def _repr(self: object) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields(self))
    return f"{type(self).__name__}({inner})"


if TYPE_CHECKING:
    @dataclass_transform(frozen_default=True, field_specifiers=(field,))
    def record(cls: type[T]) -> type[T]: ...
else:
    def record(cls):  # noqa: ANN001, ANN202 - typed by the TYPE_CHECKING twin above
        return _make(cls)


def fields(obj_or_cls: object) -> tuple[str, ...]:
    """The field names of a record or record class, in definition order."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    names: tuple[str, ...] = cls.__record_fields__  # type: ignore[attr-defined]
    return names


def replace(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` with some fields changed (``dataclasses.replace``)."""
    values = {n: getattr(obj, n) for n in fields(obj)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: Any) -> Any:
    """Records (and lists, tuples and dicts of them) as plain data, like ``dataclasses.asdict``
    (tuples become lists: the result is for JSON)."""
    if hasattr(type(obj), "__record_fields__"):
        return {n: asdict(getattr(obj, n)) for n in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [asdict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: asdict(v) for k, v in obj.items()}
    return obj
