"""Warm start: the finished trials of an earlier study become prior knowledge of a new one.

``run --warm-start-from URL[#STUDY]`` (or ``study.warm_start``) copies every COMPLETE
trial of the earlier study into the new study as it is created (``study.add_trials``),
with the new study's distributions and objective values recomputed from the trial's
record on the new study's objectives: the flagship grid's three finished ranks seed the
wider search and are not trained again (they count toward its ``n_trials``). Refused,
with one line, when the earlier study was evaluated on other examples, trained on other
data, or with another model or evaluation; a trial whose fixed hyperparameters differ
from the new config's, or that lies outside the new space, is left out and named.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_search.core import Config, StudyMeta, TrialRecord, UserError, point_key
from optuna_search.search.setup._open import load_named_study
from optuna_search.search.setup._preflight import Preflight
from optuna_search.search.setup._space import distributions
from optuna_search.storage import Ledger, distribution_contains, read_meta, study_home

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")
# What must be the same for an earlier trial to mean the same thing here.
SAME = (
    "model",
    "data.fields",
    "eval.method",
    "eval.objective_split",
    "data.train_samples",
    "train.seed",
    "data.label_map",
    "data.labels",
)
"""Beyond the data files' digests: the training subset actually used (``train_samples``
examples picked by ``train.seed``, which also initialises the adapters) and the labels."""


def open_source(source: str) -> optuna.Study:
    url, _, name = source.partition("#")
    home = study_home(url)
    if home is not None:
        from sqlalchemy.engine import make_url

        db = home / Path(str(make_url(url).database)).name
        if not db.exists():
            raise UserError(
                f"warm start: the earlier study's database '{db}' does not exist; check --warm-start-from "
                "(e.g. 'sqlite:///grid.db#mistral7b-bugs-qlora')"
            )
    return load_named_study(
        url,
        name or None,
        what="warm start: ",
        how="name it after '#', e.g. --warm-start-from 'sqlite:///grid.db#mistral7b-bugs-qlora'",
    )


def check_compatible(source: optuna.Study, config: Config, pf: Preflight) -> StudyMeta:
    """The earlier study must have scored the same examples of the same data with the same
    model; returns its meta."""
    meta = read_meta(source)
    where = f"warm start from study {source.study_name!r}"
    if meta.config is None:
        raise UserError(f"{where}: it was not created by optuna-search (no stored config)")
    problems = []
    if meta.eval_subset != pf.data.test_subset:
        problems.append(
            "its test examples differ from this study's (other ids, content, eval.num_samples or eval.seed)"
        )
    if meta.validation_subset != pf.data.validation_subset:
        problems.append("its validation examples differ from this study's")
    for split, digest in (meta.data_digest or {}).items():
        if pf.data.digests.get(split) != digest:
            problems.append(f"its {split} file differs from this study's (SHA-256)")
    stored = meta.config
    current = config.to_dict()
    if stored.get("model") != current["model"]:
        problems.append("it used another base model or quantization (model.*)")
    for key in SAME[1:]:
        section, name = key.split(".")
        if stored.get(section, {}).get(name, current[section][name]) != current[section][name]:
            problems.append(f"its {key} is {stored[section][name]!r}, this study's {current[section][name]!r}")
    if problems:
        raise UserError(f"{where} refused: " + "; ".join(problems))
    return meta


def warm_start_source(config: Config, pf: Preflight) -> optuna.Study:
    """The earlier study a new study starts from, checked (before the new one exists)."""
    source = open_source(config.study.warm_start)
    check_compatible(source, config, pf)
    return source


def warm_start(ledger: Ledger, config: Config, source: optuna.Study) -> int:
    """Copy the earlier study's COMPLETE trials into the ledger's study; returns how many."""
    from optuna.trial import TrialState, create_trial

    fields = list(config.data.fields)
    dists = distributions(config)
    keys = config.searched_keys()
    taken: set[str] = set()
    copied, skipped = [], []
    for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(t, fields)
        if record.duplicate_of is not None:
            continue
        point, why = _point_in(record, t.params, keys, dists, config)
        if point is None:
            skipped.append(f"trial {t.number} ({record.label}): {why}")
            continue
        scored = [record.objective_value(o, config.eval.objective_split) for o in config.study.objectives]
        values = [v for v in scored if v is not None]
        if len(values) < len(scored) or point_key(point) in taken:
            skipped.append(
                f"trial {t.number} ({record.label}): "
                + ("a repeat" if point_key(point) in taken else "no score for this study's objectives")
            )
            continue
        taken.add(point_key(point))
        copied.append(
            create_trial(
                state=TrialState.COMPLETE,
                values=values,
                params=point,
                distributions={k: dists[k] for k in point},
                user_attrs={
                    **t.user_attrs,
                    **record.replace(warm_start_from=f"{source.study_name}#{t.number}").to_user_attrs(),
                },
                intermediate_values=dict(t.intermediate_values) if len(values) == 1 else None,
            )
        )
    ledger.copy_in(copied, source.study_name, skipped)
    if copied:
        log.info(
            "warm start: %d finished trials of study %r copied%s",
            len(copied),
            source.study_name,
            ("; left out: " + "; ".join(skipped)) if skipped else "",
        )
    else:
        log.warning(
            "warm start: no trial of study %r fits this study, nothing was copied%s",
            source.study_name,
            (" (" + "; ".join(skipped) + ")") if skipped else " (it has no finished trial)",
        )
    return len(copied)


def _point_in(
    record: TrialRecord, params: dict[str, Any], keys: list[str], dists: dict[str, Any], config: Config
) -> tuple[dict[str, Any] | None, str]:
    """The trial as a point of this study's space, or why it is not one."""
    effective = record.effective_params or {}
    point = {}
    for k in keys:
        value = params.get(k, effective.get(k))
        if value is None:
            return None, f"it has no value for {k}"
        if k == "target_modules" and isinstance(value, list):
            value = ",".join(value)
        if not distribution_contains(dists[k], value):
            return None, f"{k} = {value!r} is outside this study's space"
        point[k] = value
    mine = config.trial_params(point).to_dict()
    differs = [
        k
        for k, v in mine.items()
        if k in effective and k not in ("batch_size", "gradient_accumulation") and _norm(effective[k]) != _norm(v)
    ]
    if differs:
        return None, "its " + ", ".join(f"{k} = {effective[k]!r} (here {mine[k]!r})" for k in differs)
    return point, ""


def _norm(v: Any) -> Any:
    return (
        [str(x) for x in v]
        if isinstance(v, (list, tuple))
        else (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
    )
