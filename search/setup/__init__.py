"""Setting a study up: its search space and samplers (``_space``, ``_samplers``), the
preflight that checks data, labels and model before anything is written (``_preflight``),
creating, resuming and opening studies (``_open``), and warm starts (``_warm``)."""

from typing import Any

from optuna_search.search.setup._open import (
    as_resumed,
    create_or_resume,
    open_for_reading,
    stored_config_of,
    study_config,
)
from optuna_search.search.setup._preflight import LARGE_GRID, Preflight, preflight
from optuna_search.search.setup._space import (
    distributions,
    fitted_distributions,
    make_sampler,
    n_target,
    space_size,
)
from optuna_search.search.setup._warm import warm_start, warm_start_source

__all__ = [
    "LARGE_GRID",
    "NoRepeatSampler",
    "Preflight",
    "as_resumed",
    "create_or_resume",
    "distributions",
    "fitted_distributions",
    "make_sampler",
    "n_target",
    "open_for_reading",
    "preflight",
    "space_size",
    "stored_config_of",
    "study_config",
    "warm_start",
    "warm_start_source",
]


def __getattr__(name: str) -> Any:
    # NoRepeatSampler is an Optuna sampler: imported on first use, so that `--help` and the
    # modules that only schedule stay free of Optuna's import.
    if name == "NoRepeatSampler":
        from optuna_search.search.setup._samplers import NoRepeatSampler

        return NoRepeatSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
