"""What a config dataclass says about its own fields, read from the class so that nothing says it
twice: the type of each field (checked against the value, so that `seq_len = 1.5` or
`max_steps = true` is one clear error naming the field rather than a traceback three layers
down), the choices of a `Literal[...]` field, and the comment and default of a field (shown by
the command line's `--help`).

A config checks its fields in `__post_init__` with `check_fields`; the code that read the
values from the user (a recipe file, flags, `key=value` overrides) knows where each came from
and adds it to the error with `InvalidField.came_from`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import reprlib
import types
import typing

from .errors import LaminaError


class InvalidField(LaminaError):
    """A config field holds a value it cannot take: `seq_len = 1.5 (from the command line:
    seq_len=1.5): must be an integer`. The source is added by whoever read the value."""

    def __init__(self, name: str, value, problem: str, source: str = "") -> None:
        self.name, self.value, self.problem, self.source = name, value, problem, source
        super().__init__(f"{name} = {shown(value)}{f' ({source})' if source else ''}: {problem}")

    def __reduce__(self):          # picklable (a worker process may raise it) despite the signature
        return InvalidField, (self.name, self.value, self.problem, self.source)

    def came_from(self, source: str, prefix: str = "") -> InvalidField:
        """The same error, said with where the value was written (and the field's table)."""
        return InvalidField(prefix + self.name, self.value, self.problem, source)


_repr = reprlib.Repr()       # bounded: a value may be a 10 MB string or nested 900 deep
_repr.maxstring, _repr.maxother, _repr.maxlong, _repr.maxlevel = 60, 60, 40, 3


def shown(value) -> str:
    """A value as it goes into an error: its repr, cut short, on one line."""
    return _repr.repr(value)


@functools.cache
def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def check_fields(config) -> None:
    """InvalidField for the first field of the dataclass instance `config` whose value does not
    fit its annotation. Call it first in `__post_init__`, before any check that compares values."""
    for f in dataclasses.fields(config):
        check_field(type(config), f.name, getattr(config, f.name))


def check_field(cls, name: str, value) -> None:
    """InvalidField when `value` does not fit the annotation of field `name` of `cls` (a dataclass,
    or a function's keyword). A float must be finite unless the field says
    `field(metadata={"finite": False})`."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None) if dataclasses.is_dataclass(cls) else None
    finite = f is None or f.metadata.get("finite", True)
    check_value(name, value, _hints(cls)[name], finite)


def check_value(name: str, value, hint, finite: bool = True, source: str = "") -> None:
    """InvalidField when `value`, said to be `name`, is not of type `hint`."""
    if not fits(value, hint, finite):
        raise InvalidField(name, value, f"must be {described(hint, finite)[0]}", source)


def fits(value, hint, finite: bool = True) -> bool:
    """Whether `value` is of type `hint`: an int is not a bool, a float may be an int but not a
    bool (nor nan or inf when `finite`), a tuple or set may be given as a list (as TOML gives it)
    and a fixed-length tuple must have its length."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Literal:        # by type too: True == 1 and 1.0 == 1, but neither is the choice
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a, finite) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return not finite or isinstance(value, int) or math.isfinite(value)
    container = origin or hint
    if container is tuple and args and args[-1] is not Ellipsis:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(fits(v, a, finite) for v, a in zip(value, args)))
    if container in (tuple, list, set, frozenset):
        ordered = container in (tuple, list)      # a set written as a list is fine; a list as a set is not
        return (isinstance(value, (list, tuple) if ordered else (list, tuple, set, frozenset))
                and (not args or all(fits(v, args[0], finite) for v in value)))
    if container is dict:
        return isinstance(value, dict) and (not args or all(
            fits(k, args[0], finite) and fits(v, args[1], finite) for k, v in value.items()))
    return isinstance(value, container) if isinstance(container, type) else True


_NAMES = {bool: ("true or false", "true or false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"), type(None): ("none", "none")}


def described(hint, finite: bool = True) -> tuple[str, str]:
    """How an error says the type `hint`: (one value, several), e.g. ("a list of 2 numbers", ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        listed = ", ".join(map(str, args))
        return f"one of {listed}", f"values from {listed}"
    if origin in (typing.Union, types.UnionType):
        kinds = [described(a, finite) for a in args if a is not type(None)]
        kinds += [_NAMES[type(None)]] if type(None) in args else []
        return " or ".join(k[0] for k in kinds), " or ".join(k[1] for k in kinds)
    if hint is float and finite:
        return "a finite number", "finite numbers"
    container = origin or hint
    if container is tuple and args and args[-1] is not Ellipsis:
        items = described(args[0], finite)[1] if len(set(args)) == 1 else "values"
        return f"a list of {len(args)} {items}", f"lists of {len(args)} {items}"
    if container in (tuple, list, set, frozenset):
        items = described(args[0], finite)[1] if args else "values"
        return f"a list of {items}", f"lists of {items}"
    if container is dict:
        items = f" of {described(args[1], finite)[1]}" if args else ""
        return f"a table{items}", f"tables{items}"
    name = getattr(hint, "__name__", str(hint))
    return _NAMES.get(hint, (f"a {name}", f"{name} values"))


@functools.cache
def choices(cls: type) -> dict[str, tuple]:
    """{field: its allowed values} for every field annotated `Literal[...]`."""
    hints = _hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is typing.Literal}


@functools.cache
def comments(cls: type) -> dict[str, str]:
    """{field: the comment at the end of its line} in the class's source, or in the source of
    the nearest base class that has one (a subclass may restate a field with its own default)."""
    found = {}     # a function (a flag may mirror a keyword) has none
    for klass in reversed([k for k in getattr(cls, "__mro__", ()) if dataclasses.is_dataclass(k)]):
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"    (\w+)\s*:[^#]*#\s*(.+)$", line)     # a field of the class body, not a method's
            if m:
                found[m[1]] = m[2].strip()
    return found


def default(cls: type, name: str):
    """The default of a dataclass field (made afresh when it has a factory), or of a keyword of a
    function."""
    if not dataclasses.is_dataclass(cls):
        return inspect.signature(cls).parameters[name].default
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
