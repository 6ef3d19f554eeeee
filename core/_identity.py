"""What a study *is*: the config keys that give its trials their meaning, where it lives,
and what a config written by an earlier version meant.

A study stores its resolved config when it is created; resuming it under a config that
changes what a trial means (model, data, evaluation, sampler, fixed hyperparameters, ...)
is refused with the list of differences. Where a study lives (storage, artifacts,
checkpoints) and how fast it runs (evaluation batch, checkpoint cadence) may change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from optuna_search.core._params import HYPERPARAMETERS, SINCE_THE_FIRST_VERSION
from optuna_search.core._schema import SECTIONS, Config

# Keys whose change does not change what a trial means.
NON_SEMANTIC_KEYS = {
    "study.name",
    "study.grid",
    "study.n_trials",
    "study.warm_start",
    "storage.url",
    "storage.artifacts",
    "storage.heartbeat_interval",
    "storage.grace_period",
    "storage.remote",
    "storage.remote_timeout",
    "storage.remote_commits_per_hour",
    "train.output_dir",
    "train.checkpoint_steps",
    "train.gradient_checkpointing",
    "train.report_to",
    "eval.batch_size",
}
# Where each study lives, as opposed to what it means: what reading commands (status,
# report, dashboard, export) take from the command line; the rest comes from the study.
LOCATION_KEYS = ("storage.url", "storage.artifacts", "study.name", "train.output_dir", "storage.remote")
# Keys added after the first version, with what a study created without them did. A
# stored config that lacks one is read with this value (not the new default), so an old
# study keeps its behaviour: e.g. its evaluation subsets were not stratified.
LEGACY_VALUES: dict[str, Any] = {
    # The hyperparameters added after the first version say theirs in their table entry.
    **{h.config: h.legacy for h in HYPERPARAMETERS if h.legacy is not SINCE_THE_FIRST_VERSION},
    "eval.stratify": False,
    "train.report_to": [],
    "study.schedule": "trials",
    "study.rungs": [0.111, 0.333, 1.0],
    "study.eta": 3,
    "study.prune_on": "accuracy",
    "study.cooldown": False,
    "study.promote": "fixed",
    "train.decay_ratio": 0.2,
    "study.objectives": ["overall_accuracy"],
    "study.warm_start": "",
}


def default_location(dotted: str) -> str:
    """The default of a location key (e.g. ``storage.url``)."""
    section, key = dotted.split(".")
    return str(next(f.default for f in dataclasses.fields(SECTIONS[section]) if f.name == key))


def flatten(config_dict: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config_dict.items() for k, v in values.items()}


def with_legacy_values(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the keys it lacks filled in as its version meant them."""
    out = {section: dict(values) for section, values in stored.items()}
    for dotted, value in LEGACY_VALUES.items():
        section, key = dotted.split(".")
        out.setdefault(section, {}).setdefault(key, value)
    return out


def semantic_view(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys that define what a trial means (see NON_SEMANTIC_KEYS)."""
    flat = {k: v for k, v in flatten(config_dict).items() if k not in NON_SEMANTIC_KEYS}
    # Which keys a grid searches matters (a searched lr vs a fixed one); extra values don't.
    flat["study.grid_keys"] = sorted(config_dict.get("study", {}).get("grid", {}))
    return flat


def diff_semantic(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs in meaning between a study's stored config and ``current``. Keys the
    stored config lacks take their LEGACY_VALUES; keys added later without a legacy
    value are not compared."""
    a, b = semantic_view(with_legacy_values(stored)), semantic_view(current)
    return [f"{key}: study has {a[key]!r}, config has {b.get(key)!r}" for key in sorted(a) if a[key] != b.get(key)]


def adopt_legacy_defaults(
    stored: dict[str, Any], config: Config, explicit: set[str] | None = None
) -> tuple[Config, list[str]]:
    """For a study whose stored config predates some keys: where the user did not set such
    a key (``explicit``: the keys a config file, --set or a flag set; None: those left at
    their default), use what the study meant instead, so an old study resumes with the
    same preset even where the preset's value changed since; an explicit other value
    stays, and ``diff_semantic`` names it."""
    flat_stored = flatten(stored)
    changes: dict[str, dict[str, Any]] = {}
    adopted = []
    for dotted, legacy in LEGACY_VALUES.items():
        section, key = dotted.split(".")
        if dotted in flat_stored:
            continue
        current = getattr(getattr(config, section), key)
        unset = dotted not in explicit if explicit is not None else current == _default(section, key)
        if unset and current != legacy:
            changes.setdefault(section, {})[key] = legacy
            adopted.append(f"{dotted} = {legacy!r}")
    for section, values in changes.items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})
    return config, adopted


def _default(section: str, key: str) -> Any:
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc, operator]
