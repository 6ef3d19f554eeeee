"""Opening a study: create-or-resume for ``run``, read-only for everything else.

``create_or_resume`` stores on a new study what makes its trials comparable (the
resolved config, the evaluation subsets, the data digests, the baselines) and refuses to
resume one under a config that changes what its trials mean. ``open_for_reading`` needs
nothing but where the study lives: the storage URL and, when the storage holds several,
the name; the study's own stored config says the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna_search.core import (
    Config,
    StudyLocation,
    StudyMeta,
    UserError,
    adopt_legacy_defaults,
    build_config,
    default_location,
    diff_semantic,
    to_toml,
    with_legacy_values,
)
from optuna_search.search.setup._preflight import Preflight
from optuna_search.search.setup._space import fitted_distributions, make_pruner, make_sampler
from optuna_search.storage import (
    ClaimLock,
    create_study,
    engine_of,
    list_study_names,
    located,
    open_storage,
    read_meta,
    redact_url,
    redacted_config,
    study_home,
    write_meta,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")


def stored_config_of(config: Config) -> dict[str, Any] | None:
    """The config stored on the study ``config`` names, if it exists (None for a new
    study or a new database). Opens the storage read-only: looks, writes nothing."""
    try:
        study = load_named_study(config.storage.url, config.study.name)
    except UserError:
        return None  # no database yet, an empty one, or no such study there: a new study
    return read_meta(study).config


def as_resumed(config: Config, explicit: set[str] | None = None) -> Config:
    """``config`` as the existing study it names reads it: keys its stored config
    predates take what the study meant then (e.g. unstratified evaluation subsets),
    unless the user set them (``explicit``; None: unless changed from the default)."""
    stored = stored_config_of(config)
    if stored is None:
        return config
    adjusted, adopted = adopt_legacy_defaults(stored, config, explicit)
    if adopted:
        log.info("study %r was created by an earlier version: keeping its %s", config.study.name, ", ".join(adopted))
    return adjusted


def create_or_resume(config: Config, pf: Preflight) -> tuple[optuna.Study, bool]:
    """The study named by ``config``, created if it does not exist (for ``run``), and
    whether it was created now."""
    import optuna

    storage = open_storage(
        config.storage.url,
        mode="create",
        heartbeat_interval=config.storage.heartbeat_interval,
        grace_period=config.storage.grace_period,
    )
    # Two processes may start the same new study at once: one creates it and stores its
    # attrs while the other waits, then loads it.
    with ClaimLock(engine_of(storage), config.study.name):
        if config.study.name not in list_study_names(storage):
            return _create(config, pf, storage), True
    study = optuna.load_study(
        study_name=config.study.name, storage=storage, sampler=make_sampler(config), pruner=make_pruner(config)
    )
    check_resumable(study, config, pf)
    _record_extension(study, config)
    return study, False


def _record_extension(study: optuna.Study, config: Config) -> None:
    """`run --n-trials N` extends a search: the stored config says so from then on
    (what `status` and `report` count against)."""
    stored = read_meta(study).config
    if stored is not None and stored.get("study", {}).get("n_trials", config.study.n_trials) != config.study.n_trials:
        shown = redacted_config(config)
        write_meta(
            study,
            StudyMeta(
                config={**stored, "study": {**stored["study"], "n_trials": config.study.n_trials}},
                config_toml=to_toml(shown),
            ),
        )


def _create(config: Config, pf: Preflight, storage: Any) -> optuna.Study:
    study = create_study(
        config.study.name,
        storage,
        make_sampler(config),
        make_pruner(config),
        list(config.directions()),
        list(config.study.objectives),
    )
    shown = redacted_config(config)
    write_meta(
        study,
        StudyMeta(
            config=shown.to_dict(),
            config_toml=to_toml(shown),
            eval_subset=pf.data.test_subset,
            validation_subset=pf.data.validation_subset,
            baselines=pf.baselines,
            baseline_predictions=pf.baseline_predictions,
            validation_baselines=pf.validation_baselines,
            grid_size=len(config.grid_points()) if config.is_grid else None,
            data_digest=pf.data.digests,
            labels=pf.data.dataset.vocab,
        ),
    )
    return study


def check_resumable(study: optuna.Study, config: Config, pf: Preflight) -> None:
    meta = read_meta(study)
    where = f"study {config.study.name!r} in {redact_url(config.storage.url)}"
    fitted_distributions(config, study.get_trials(deepcopy=False), where, redact_url(config.storage.url))
    if meta.config is not None:
        diffs = diff_semantic(meta.config, config.to_dict())
        if diffs:
            raise UserError(
                f"{where} was created with a config that gives its trials a different meaning; resume it with "
                "the original config, or start a new study with --study-name. Differences:",
                diffs,
            )
    if meta.eval_subset not in (None, pf.data.test_subset):
        raise UserError(
            f"the evaluation subset of {where} differs from the one the test file gives now; restore "
            "the original test file or start a new study (--study-name)"
        )
    if meta.validation_subset is None:
        # A study created before validation subsets existed: fix one now, once.
        write_meta(
            study, StudyMeta(validation_subset=pf.data.validation_subset, validation_baselines=pf.validation_baselines)
        )
    elif meta.validation_subset != pf.data.validation_subset:
        raise UserError(
            f"the validation subset of {where} differs from the one the validation file gives now; restore "
            "the original validation file or start a new study (--study-name)"
        )


@dataclass
class OpenedStudy:
    study: optuna.Study
    config: Config
    """The study's own config, located where the command line says."""


def open_for_reading(location: StudyLocation, *, mode: str = "read") -> OpenedStudy:
    """A study opened from its location alone (its storage URL, or the default; its name
    where the storage holds several; where its files moved): read-only unless
    ``mode="write"`` (the dashboard, which saves notes; ensembles, stored on the study)."""
    url = location.storage_url or default_location("storage.url")
    study = load_named_study(url, location.study_name, mode=mode)
    return OpenedStudy(study, study_config(study, location.replace(storage_url=url, study_name=study.study_name)))


def load_named_study(
    url: str, name: str | None, *, mode: str = "read", what: str = "", how: str = "pass --study-name"
) -> optuna.Study:
    """The study ``name`` of a storage (without a name: its only study), opened for
    ``mode``, with a sampler that never samples (reading needs none)."""
    import optuna

    storage = open_storage(url, mode=mode)
    names = list_study_names(storage)
    if name is None:
        if len(names) != 1:
            raise UserError(f"{what}{redact_url(url)} holds {len(names)} studies ({', '.join(names) or 'none'}); {how}")
        name = names[0]
    if name not in names:
        raise UserError(
            f"{what}no study {name!r} in {redact_url(url)}; studies there: {', '.join(names) or 'none'} ({how})"
        )
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(0))


def study_config(study: optuna.Study, location: StudyLocation) -> Config:
    """The config a study was created with, located where ``location`` says (explicit
    keys win; the rest of the location comes from the study's own config). Keys it
    predates read as they meant then."""
    stored = read_meta(study).config
    if stored is None:
        raise UserError(
            f"study {study.study_name!r} was not created by optuna-search (it has no stored config); "
            "use optuna-dashboard or the optuna CLI for it"
        )
    raw = with_legacy_values(stored)
    given = location.keys()
    for dotted, value in given.items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
    # Paths the study stored relative to where it ran: found from any folder.
    home = study_home(location.storage_url or raw.get("storage", {}).get("url", ""))
    for section, key in (("train", "output_dir"), ("storage", "artifacts")):
        if f"{section}.{key}" not in given and raw.get(section, {}).get(key):
            raw[section][key] = str(located(raw[section][key], home))
    return build_config(raw)
