"""Opening a study: create-or-resume for ``run``, read-only for everything else.

``create_or_resume`` stores on a new study what makes its trials comparable (the
resolved config, the evaluation subsets, the baselines) and refuses to resume one under
a config that changes what its trials mean. ``open_for_reading`` needs nothing but where
the study lives: the storage URL and, when the storage holds several studies, the name;
the study's own stored config says the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from optuna_search.core import Config, UserError, build_config
from optuna_search.core._config import PRIMARY_OBJECTIVE, diff_semantic, to_toml
from optuna_search.core._record import (
    ATTR_BASELINE_PREDICTIONS,
    ATTR_BASELINES,
    ATTR_CONFIG,
    ATTR_CONFIG_TOML,
    ATTR_EVAL_SUBSET,
    ATTR_GRID_SIZE,
    ATTR_VALIDATION_BASELINES,
    ATTR_VALIDATION_SUBSET,
)
from optuna_search.search._config import default_location
from optuna_search.search._preflight import Preflight
from optuna_search.search._space import make_pruner, make_sampler
from optuna_search.storage._claim import ClaimLock
from optuna_search.storage._internals import engine_of
from optuna_search.storage._storages import list_study_names, open_storage, redact_url


def create_or_resume(config: Config, pf: Preflight):
    """The study named by ``config``, created if it does not exist (for ``run``)."""
    import optuna

    storage = open_storage(config.storage.url, mode="create", heartbeat_interval=config.storage.heartbeat_interval,
                           grace_period=config.storage.grace_period)
    # Two processes may start the same new study at once: one creates it and stores its
    # attrs while the other waits, then loads it.
    with ClaimLock(engine_of(storage), config.study.name):
        if config.study.name not in list_study_names(storage):
            return _create(config, pf, storage)
    study = optuna.load_study(study_name=config.study.name, storage=storage, sampler=make_sampler(config),
                              pruner=make_pruner(config))
    _check_resumable(study, config, pf)
    _record_extension(study, config)
    return study


def _record_extension(study: Any, config: Config) -> None:
    """`run --n-trials N` extends a search: the stored config says so from then on
    (what `status` and `report` count against)."""
    stored = study.user_attrs.get(ATTR_CONFIG)
    if stored is not None and stored.get("study", {}).get("n_trials", config.study.n_trials) != config.study.n_trials:
        shown = stored_config(config)
        study.set_user_attr(ATTR_CONFIG, {**stored, "study": {**stored["study"], "n_trials": config.study.n_trials}})
        study.set_user_attr(ATTR_CONFIG_TOML, to_toml(shown))


def _create(config: Config, pf: Preflight, storage: Any):
    import optuna

    study = optuna.create_study(study_name=config.study.name, storage=storage, sampler=make_sampler(config),
                                pruner=make_pruner(config), directions=config.directions())
    study.set_metric_names(list(config.study.objectives))
    shown = stored_config(config)
    for key, value in (
        (ATTR_CONFIG, shown.to_dict()),
        (ATTR_CONFIG_TOML, to_toml(shown)),
        (ATTR_EVAL_SUBSET, pf.data.test_subset),
        (ATTR_VALIDATION_SUBSET, pf.data.validation_subset),
        (ATTR_BASELINES, pf.baselines),
        (ATTR_BASELINE_PREDICTIONS, pf.baseline_predictions),
        (ATTR_VALIDATION_BASELINES, pf.validation_baselines),
        (ATTR_GRID_SIZE, len(config.grid_points()) if config.is_grid else None),
    ):
        if value is not None:
            study.set_user_attr(key, value)
    return study


def stored_config(config: Config) -> Config:
    """The copy stored on the study, shown in the dashboard and reports: never a password."""
    return dataclasses.replace(config, storage=dataclasses.replace(config.storage, url=redact_url(config.storage.url)))


def _check_resumable(study: Any, config: Config, pf: Preflight) -> None:
    stored = study.user_attrs.get(ATTR_CONFIG)
    where = f"study {config.study.name!r} in {redact_url(config.storage.url)}"
    if stored is not None:
        diffs = diff_semantic(stored, config.to_dict())
        if diffs:
            raise UserError(
                f"{where} was created with a config that gives its trials a different meaning; resume it with "
                "the original config, or start a new study with --study-name. Differences:", diffs)
    if study.user_attrs.get(ATTR_EVAL_SUBSET) not in (None, pf.data.test_subset):
        raise UserError(f"the evaluation subset of {where} differs from the one the test file gives now; restore "
                        "the original test file or start a new study (--study-name)")
    if ATTR_VALIDATION_SUBSET not in study.user_attrs:
        # A study created before validation subsets existed: fix one now, once.
        study.set_user_attr(ATTR_VALIDATION_SUBSET, pf.data.validation_subset)
        study.set_user_attr(ATTR_VALIDATION_BASELINES, pf.validation_baselines)
    elif study.user_attrs[ATTR_VALIDATION_SUBSET] != pf.data.validation_subset:
        raise UserError(f"the validation subset of {where} differs from the one the validation file gives now; restore "
                        "the original validation file or start a new study (--study-name)")


@dataclass
class OpenedStudy:
    study: Any
    config: Config
    """The study's own config, located where the command line says."""


def open_for_reading(location: dict[str, str], *, mode: str = "read") -> OpenedStudy:
    """A study opened from its location alone (``storage.url``, optional ``study.name``,
    ``storage.artifacts``, ``train.output_dir``): read-only unless ``mode="write"``
    (the dashboard, which saves notes)."""
    import optuna

    url = location.get("storage.url") or default_location("storage.url")
    storage = open_storage(url, mode=mode)
    names = list_study_names(storage)
    name = location.get("study.name")
    if name is None:
        if len(names) != 1:
            raise UserError(f"{redact_url(url)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                            "pass --study-name")
        name = names[0]
    if name not in names:
        raise UserError(f"no study {name!r} in {redact_url(url)}; studies there: {', '.join(names) or 'none'} (pass --study-name)")
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(0))
    return OpenedStudy(study, study_config(study, {**location, "storage.url": url, "study.name": name}))


def study_config(study: Any, location: dict[str, str]) -> Config:
    """The config a study was created with, located where ``location`` says (explicit
    keys win; the rest of the location comes from the study's own config)."""
    stored = study.user_attrs.get(ATTR_CONFIG)
    if stored is None:
        raise UserError(f"study {study.study_name!r} was not created by optuna-search (it has no stored config); "
                        "use optuna-dashboard or the optuna CLI for it")
    raw = {section: dict(values) for section, values in stored.items()}
    for dotted, value in location.items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
    raw.setdefault("study", {}).setdefault("objectives", [PRIMARY_OBJECTIVE])
    return build_config(raw)
