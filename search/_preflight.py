"""Everything checked before a study is touched: storage URL, data, labels, the
evaluation subsets, the model, and the baselines every trial is compared with."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from optuna_search.core import Config
from optuna_search.objectives._baselines import compute_baselines
from optuna_search.objectives._data import StudyData, prepare_study_data
from optuna_search.objectives._model import check_model_available
from optuna_search.objectives._quality import check_quality
from optuna_search.storage._storages import check_storage_url

log = logging.getLogger("optuna_search")
LARGE_GRID = 1000


@dataclass
class Preflight:
    config: Config
    data: StudyData
    baselines: dict[str, dict[str, float]]
    """Per baseline: accuracy per field and overall, on the test subset."""
    baseline_predictions: dict[str, dict[str, dict[str, str]]]
    validation_baselines: dict[str, dict[str, float]]
    """The same on the validation subset."""
    quality: dict[str, Any]


def preflight(config: Config) -> Preflight:
    """Validate data, labels, model and storage URL. Writes nothing anywhere except the
    cache of builtin and GGUF models."""
    check_storage_url(config.storage.url)
    data = prepare_study_data(config.data, config.eval, train_seed=config.train.seed, max_length=config.model.max_length)
    for note in data.notes:
        log.warning("%s", note)
    if config.is_grid and len(config.grid_points()) > LARGE_GRID:
        log.warning("the grid has %d points: a long study (its estimated duration follows the first trial; "
                    "`status` shows the ETA); a sampler (study.sampler = \"tpe\") explores such spaces in far fewer trials",
                    len(config.grid_points()))
    check_model_available(config.model)
    fields = data.dataset.fields
    train = data.dataset.train.examples
    baselines = compute_baselines(train, {"test": data.test_examples, "validation": data.validation_examples}, fields)
    return Preflight(config, data, baselines["test"]["accuracy"], baselines["test"]["predictions"],
                     baselines["validation"]["accuracy"], check_quality(data.dataset))
