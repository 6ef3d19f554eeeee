"""Everything checked before a study is touched: storage URL, data, labels, the
evaluation subsets, the model and its LoRA targets, the optimizer and trackers, the
schedule against the data, and the baselines every trial is compared with. Any problem
here is a UserError: exit 2, nothing written."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any

from optuna_search.core import Config, UserError, to_optuna_value
from optuna_search.objectives import (
    StudyData,
    check_lora_targets,
    check_model_available,
    check_quality,
    compute_baselines,
    prepare_study_data,
)
from optuna_search.search.setup._space import space_size
from optuna_search.storage import check_storage_url

log = logging.getLogger("optuna_search")
LARGE_GRID = 1000
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass
class Preflight:
    config: Config
    data: StudyData
    baselines: dict[str, dict[str, float]]
    """Per baseline: accuracy per field and overall (and F1 metrics), on the test subset."""
    baseline_predictions: dict[str, dict[str, dict[str, str]]]
    validation_baselines: dict[str, dict[str, float]]
    """The same on the validation subset."""
    quality: dict[str, Any]


def preflight(config: Config, *, model: bool = True, here: bool = True) -> Preflight:
    """Validate data, labels, model and storage URL. Writes nothing anywhere except the
    cache of builtin and GGUF models. ``here``: the config runs on this machine (`run`);
    `validate` may check a Kaggle config on a laptop, and only warns."""
    check_storage_url(config.storage.url)
    try:
        check_environment(config)
    except UserError as e:
        if here:
            raise
        log.warning(
            "%s",
            str(e).replace("this machine cannot run the config as it is:", "on this machine the config could not run:"),
        )
    data = prepare_study_data(
        config.data, config.eval, train_seed=config.train.seed, max_length=config.model.max_length
    )
    for note in data.notes:
        log.warning("%s", note)
    check_space(config)
    check_validation_points(config, len(data.dataset.train.examples))
    if model:
        source = check_model_available(config.model)
        check_lora_targets(source, config.model, [config.trial_params(p) for p in _sample_points(config)])
    fields = data.dataset.fields
    train = data.dataset.train.examples
    baselines = compute_baselines(
        train, {"test": data.test_examples, "validation": data.validation_examples}, fields, data.dataset.vocab
    )
    return Preflight(
        config,
        data,
        baselines["test"]["metrics"],
        baselines["test"]["predictions"],
        baselines["validation"]["metrics"],
        check_quality(data.dataset),
    )


def check_environment(config: Config) -> None:
    """What this machine must have for the config: the trackers' packages. (bitsandbytes'
    8-bit and paged optimizers run on the CPU too, without paging.)"""
    problems = []
    for t in config.train.report_to:
        if importlib.util.find_spec(TRACKER_PACKAGES[t]) is None:
            problems.append(
                f"train.report_to names {t!r}, but the package {TRACKER_PACKAGES[t]!r} is not installed; "
                f"`pip install {TRACKER_PACKAGES[t]}` or remove it from train.report_to"
            )
    if problems:
        raise UserError("this machine cannot run the config as it is:", problems)


def check_space(config: Config) -> None:
    size = space_size(config)
    if config.is_grid and size is not None and size > LARGE_GRID:
        log.warning(
            "the grid has %d points: a long study (its estimated duration follows the first trial; "
            '`status` shows the ETA); a sampler (study.sampler = "tpe") explores such spaces in far fewer trials',
            size,
        )
    if not config.is_grid and size is not None and config.study.n_trials > size:
        log.warning(
            "study.n_trials = %d but the search space has only %d points: the study ends when every point has "
            "a finished trial (%d trials)",
            config.study.n_trials,
            size,
            size,
        )


def check_validation_points(config: Config, n_train: int) -> None:
    """Validation points must fall on distinct optimizer steps: an epoch of n steps has
    at most n of them (Trainer would merge the rest, and a pruner would see fewer)."""
    batch = max([config.train.batch_size] + _values(config, "batch_size"))
    accumulation = max([config.train.gradient_accumulation] + _values(config, "gradient_accumulation"))
    steps = math.ceil(n_train / (batch * accumulation))
    if config.train.validations_per_epoch > steps:
        raise UserError(
            f"train.validations_per_epoch = {config.train.validations_per_epoch} but an epoch has only "
            f"{steps} optimizer steps ({n_train} training examples, batch {batch} x accumulation "
            f"{accumulation}); use at most {steps}"
        )


def _values(config: Config, key: str) -> list[Any]:
    """The values a study gives ``key``: a list's, or a range's ends."""
    spec = (config.study.grid if config.is_grid else config.study.search_space).get(key)
    if spec is None:
        return []
    return list(spec) if isinstance(spec, list) else [spec["low"], spec["high"]]


STRUCTURAL = ("target_modules", "use_dora", "use_rslora")


def _sample_points(config: Config) -> list[dict[str, Any]]:
    """Every combination of the searched values that change the adapter's structure
    (target modules, DoRA, rsLoRA): what peft must accept before a study starts."""
    points: list[dict[str, Any]] = [{}]
    for key in STRUCTURAL:
        values = _values(config, key)
        if values:
            points = [{**p, key: to_optuna_value(key, v)} for p in points for v in values]
    return points
