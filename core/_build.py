"""Building a :class:`Config` from merged raw TOML values: every key checked against the
type of its field (``Literal`` values, finite numbers, lists, tables), then every value
checked by its section; all problems raised at once as one :class:`UserError`."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, Literal

from optuna_search.core._errors import UserError
from optuna_search.core._schema import SECTIONS, Config, suggest


def build_config(raw: dict[str, Any]) -> Config:
    """Type-check and validate a merged raw mapping; raise every problem at once."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        cls = SECTIONS.get(section)
        if cls is None:
            problems.append(
                f"unknown section [{section}]{suggest(section, list(SECTIONS))}; allowed sections: "
                f"{', '.join(SECTIONS)}"
            )
            continue
        if not isinstance(values, dict):
            problems.append(f"top-level key {section!r} must be a [section] table, got {values!r}")
            continue
        sections[section] = _section_kwargs(section, cls, values, problems)
    # Keys of the wrong type keep their defaults for the value checks: every problem of
    # the config is reported in one message.
    config = Config(**{name: cls(**sections.get(name, {})) for name, cls in SECTIONS.items()})
    problems += config.problems()
    if problems:
        raise UserError("invalid configuration:", problems)
    return config


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_kwargs(section: str, cls: type, values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    kwargs = {}
    known = {f.name for f in dataclasses.fields(cls)}
    types = field_types(cls)
    for key, value in values.items():
        if key not in known:
            problems.append(
                f"unknown key {section}.{key}{suggest(key, sorted(known), prefix=section + '.')}; "
                f"allowed keys in [{section}]: {', '.join(known)}"
            )
            continue
        coerced, problem = coerce(f"{section}.{key}", value, types[key])
        if problem:
            problems.append(problem)
        else:
            kwargs[key] = coerced
    return kwargs


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def coerce(name: str, value: Any, annotation: Any) -> tuple[Any, str | None]:
    """Check a raw TOML value against a field's type; (value, None) or (None, problem)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value in args:
            return value, None
        return None, (
            f"{name} = {value!r} is not one of {', '.join(map(str, args))}"
            + (suggest(value, [str(a) for a in args]) if isinstance(value, str) else "")
        )
    if annotation is bool:
        return (value, None) if isinstance(value, bool) else (None, f"{name} = {value!r} must be true or false")
    if annotation is int:
        return (
            (value, None)
            if isinstance(value, int) and not isinstance(value, bool)
            else (None, f"{name} = {value!r} must be an integer")
        )
    if annotation is float:
        if not _number(value):
            return None, f"{name} = {value!r} must be a number"
        if not math.isfinite(value):
            return None, f"{name} = {value!r} must be a finite number"
        return float(value), None
    if annotation is str:
        return (value, None) if isinstance(value, str) else (None, f"{name} = {value!r} must be a string")
    if origin is list:
        item = args[0] if args else Any
        if isinstance(value, str):  # "a,b,c" from --set
            value = [s.strip() for s in value.split(",") if s.strip()]
        if not isinstance(value, list):
            return None, f"{name} = {value!r} must be a list"
        if item is str and not all(isinstance(v, str) for v in value):
            return None, f"{name} = {value!r} must be a list of strings"
        if item is float:
            if not all(_number(v) and math.isfinite(v) for v in value):
                return None, f"{name} = {value!r} must be a list of finite numbers"
            value = [float(v) for v in value]
        return list(value), None
    if origin is dict:
        if not isinstance(value, dict):
            return None, f"{name} = {value!r} must be a table"
        bad = _non_finite(value)
        if bad is not None:
            return None, f"{name} holds {bad!r}: numbers must be finite"
        return dict(value), None
    return value, None  # pragma: no cover


def _non_finite(value: Any) -> Any:
    """The first nan/inf inside a nested table or list, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in items:
        bad = _non_finite(v)
        if bad is not None:
            return bad
    return None
