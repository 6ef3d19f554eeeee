"""Dataclasses to JSON and back, by their type hints: what crosses a process boundary (a
DDP rank's outcome, written by one process and read by another) comes back as the same
types it left as, nested dataclasses and lists of them included, with no field converted
by hand (a field added later travels too)."""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def to_json(obj: Any) -> Any:
    """A dataclass (or a list, dict, enum, plain value) as JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def from_json(cls: type[T], data: Any) -> T:
    """What ``to_json`` wrote for a ``cls``, as a ``cls`` again."""
    return typing.cast(T, _decode(cls, data))


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _decode(kinds[0], value) if len(kinds) == 1 else value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp, vars(sys.modules[tp.__module__]))
        given = {f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value}
        return tp(**given)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin in (list, tuple):
        item = args[0] if args else Any
        decoded = [_decode(item, v) for v in value]
        return tuple(decoded) if origin is tuple else decoded
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()} if args else dict(value)
    return value
