"""A worker for the parallel tests and benchmark: runs the project's scheduling loop
(claim lock, GridPointSampler, heartbeat storage) with a fast runner on each of the
given studies in turn.

    python tests/grid_worker.py URL GRID_SIZE SLEEP STUDY [STUDY ...]

SLEEP: "0.03" sleeps a random 0-0.03 s per trial; "fixed:2" sleeps exactly 2 s.
"""

from __future__ import annotations

import random
import sys
import time

import optuna

from optuna_search.objectives._quiet import quiet_libraries
from optuna_search.search._config import load_config
from optuna_search.core import TrialRecord
from optuna_search.search._scheduler import Outcome, Scheduler, TrialOutcome
from optuna_search.search._space import make_sampler
from optuna_search.storage._internals import heartbeat
from optuna_search.storage._storages import open_storage


class SleepRunner:
    """Stands in for the trial runner: holds the heartbeat, sleeps, returns the value."""

    def __init__(self, study, sleep: str) -> None:
        self.study = study
        fixed = sleep.startswith("fixed:")
        value = float(sleep.split(":", 1)[1] if fixed else sleep)
        self.sleep = (lambda: value) if fixed else (lambda: random.uniform(0, value))

    def run(self, trial, *, position, attempts, rung=None) -> TrialOutcome:
        with heartbeat(self.study, trial):
            time.sleep(self.sleep())
        return TrialOutcome(Outcome.COMPLETE, TrialRecord(), values=[float(trial.params["lora_r"])])


def grid_config(url: str, grid_size: int, study: str):
    return load_config(preset="demo", sets=[
        f"study.grid={{lora_r={list(range(1, grid_size + 1))}}}", f'storage.url="{url}"', f'study.name="{study}"',
        "storage.heartbeat_interval=5", "storage.grace_period=30",
    ])


def create(url: str, grid_size: int, study: str):
    config = grid_config(url, grid_size, study)
    storage = open_storage(url, heartbeat_interval=5, grace_period=30)
    return optuna.create_study(study_name=study, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=make_sampler(config)), config


def main() -> None:
    url, grid_size, sleep, studies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # As `optuna-search` does: the expected warnings (heartbeat with ask/tell, the Optuna
    # "experimental" features it relies on) are filtered, anything else still shows.
    quiet_libraries()
    for name in studies:
        study, config = create(url, grid_size, name)
        Scheduler(study, config, SleepRunner(study, sleep)).run(wait_for_others=False)


if __name__ == "__main__":
    main()
