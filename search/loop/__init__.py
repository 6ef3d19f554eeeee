"""The study loop: what a study is made of and what runs next (``_schedule``,
``_halving``), the loop itself (``_scheduler``: the claim lock, the ledger), the runner
(``_runner``), samplers and search spaces, preflight, opening studies, workers, signals,
warm starts, `status` and the run's summary."""

from typing import Any

from optuna_search.search.loop._halving import Config as HalvingConfig
from optuna_search.search.loop._halving import next_action
from optuna_search.search.loop._schedule import Promote, PruneRest, Train
from optuna_search.search.loop._scheduler import Job, Outcome, Runner, RunOutcome, Scheduler, TrialOutcome
from optuna_search.search.loop._space import distributions, make_sampler

__all__ = [
    "HalvingConfig",
    "Job",
    "NoRepeatSampler",
    "Outcome",
    "Promote",
    "PruneRest",
    "RunOutcome",
    "Runner",
    "Scheduler",
    "Train",
    "TrialOutcome",
    "distributions",
    "make_sampler",
    "next_action",
]


def __getattr__(name: str) -> Any:
    # NoRepeatSampler is an Optuna sampler: imported on first use, so that `--help` and the
    # modules that only schedule stay free of Optuna's import.
    if name == "NoRepeatSampler":
        from optuna_search.search.loop._samplers import NoRepeatSampler

        return NoRepeatSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
