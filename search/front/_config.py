"""Configuration from the command line: presets, TOML files and ``--set`` overrides.

Precedence, lowest first: dataclass defaults < ``--preset`` < ``--config`` file <
``--set section.key=value`` < explicit flags (``--storage``, ``--study-name``).
The dataclasses and their validation live in ``optuna_search.core``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from optuna_search.core import (
    LOCATION_KEYS,
    Config,
    StudyLocation,
    TOMLDecodeError,
    UserError,
    build_config,
    loads,
    suggest,
)


def list_presets() -> list[str]:
    files = resources.files("optuna_search.search.presets")
    return sorted(p.name[: -len(".toml")] for p in files.iterdir() if p.name.endswith(".toml"))


def read_preset(name: str) -> dict[str, Any]:
    presets = list_presets()
    if name not in presets:
        raise UserError(f"unknown preset {name!r}{suggest(name, presets)}; available presets: {', '.join(presets)}")
    return loads(resources.files("optuna_search.search.presets").joinpath(f"{name}.toml").read_text())


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file; ``-`` reads standard input (how `run --workers` hands each
    worker its resolved config)."""
    if str(path) == "-":
        try:
            return loads(sys.stdin.read())
        except TOMLDecodeError as e:
            raise UserError(f"the config on standard input is not valid TOML: {e}") from None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"config file {str(p)!r} does not exist; pass an existing TOML file to --config") from None
    except IsADirectoryError:
        raise UserError(f"config file {str(p)!r} is a directory; pass a TOML file to --config") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {str(p)!r} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read config file {str(p)!r}: {e.strerror}; check its permissions") from None
    try:
        return relative_to_file(loads(text), p)
    except TOMLDecodeError as e:
        raise UserError(f"config file {str(p)!r} is not valid TOML: {e}; fix the syntax there") from None


FILE_KEYS = (("data", "train"), ("data", "validation"), ("data", "test"))
"""Paths a config file names: relative ones are relative to the file's folder."""


def relative_to_file(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The file's relative data paths made relative to its folder (a config next to its
    data works from any folder; an error then names the path it tried)."""
    base = path.resolve().parent
    for section, key in FILE_KEYS:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if (
            isinstance(value, str)
            and value
            and not value.startswith("builtin:")
            and not Path(value).expanduser().is_absolute()
        ):
            raw[section][key] = str(base / value)
    return raw


def parse_set_option(item: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as TOML (so 4, 2e-4, true, [4, 8]
    and "text" all work) and falls back to a bare string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"--set {item!r} is not of the form section.key=value (e.g. --set train.epochs=1)")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = loads(f"v = {raw.strip()}")["v"]
    except TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def merge_layers(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        for section, values in layer.items():
            if isinstance(values, dict) and isinstance(merged.get(section, {}), dict):
                merged.setdefault(section, {}).update(values)
            else:
                merged[section] = values  # not a table: build_config names the problem
    return merged


@dataclass(frozen=True)
class Layers:
    """The configuration's layers, read once (a file on standard input cannot be read twice)."""

    merged: dict[str, Any]
    """Every layer merged, before validation."""
    user: dict[str, Any]
    """What the user set: the config file, --set and flags (not the preset, not the defaults)."""


def config_layers(
    preset: str | None = None,
    config_file: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Layers:
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(read_preset(preset))
    user = [read_toml(config_file)] if config_file else []
    set_layer: dict[str, dict[str, Any]] = {}
    for item in sets or []:
        section, key, value = parse_set_option(item)
        set_layer.setdefault(section, {})[key] = value
    user += [set_layer, overrides or {}]
    return Layers(merge_layers(*layers, *user), merge_layers(*user))


def explicit_of(layers: Layers) -> set[str]:
    """The keys the user set, as opposed to a preset's or the defaults: what an old study's
    legacy values may not override."""
    return {f"{section}.{key}" for section, values in layers.user.items() if isinstance(values, dict) for key in values}


def load_config(
    preset: str | None = None,
    config_file: str | None = None,
    sets: list[str] | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """A validated config from a preset, a TOML file, ``section.key=value`` strings (a list,
    or one string) and raw overrides, in that order of precedence (the last wins), as the
    command line builds it; every problem raised at once as a :class:`UserError`."""
    if isinstance(sets, str):
        sets = [sets]
    return build_config(config_layers(preset, config_file, sets, overrides).merged)


def explicit_location(raw: dict[str, Any]) -> StudyLocation:
    """The location keys (storage.url, storage.artifacts, study.name, train.output_dir)
    that the command line, a file or a preset sets explicitly: what reading commands
    take; everything else they read from the study itself."""
    out = {}
    for dotted in LOCATION_KEYS:
        section, key = dotted.split(".")
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{dotted} = {value!r} must be a non-empty string")
            out[dotted] = value
    return StudyLocation.of(out)
