"""A worker for the parallel tests and benchmark: runs the project's scheduling loop
(claim lock, GridPointSampler, heartbeat storage) with a fast runner on each of the
given studies in turn.

    python tests/grid_worker.py URL GRID_SIZE SLEEP STUDY [STUDY ...]

SLEEP: "0.03" sleeps a random 0-0.03 s per trial; "fixed:2" sleeps exactly 2 s;
"halving:0.05:LOG" runs successive halving (rungs 1/9, 1/3, 1, eta 3; the metric at each
rung is lora_r / 100), sleeps a random 0-0.05 s per rung and appends "lora_r rung" to LOG.
"""

from __future__ import annotations

import random
import sys
import time

import optuna

from optuna_search.core import TrialRecord
from optuna_search.objectives import quiet_libraries
from optuna_search.search import load_config
from optuna_search.search.loop import Outcome, Scheduler, TrialOutcome
from optuna_search.search.setup import make_sampler
from optuna_search.storage import open_storage


class SleepRunner:
    """Stands in for the trial runner: sleeps, returns the value (the scheduler holds the
    trial's heartbeat meanwhile)."""

    def __init__(self, study, sleep: str) -> None:
        self.study = study
        kind, _, rest = sleep.partition(":")
        self.log = rest.split(":", 1)[1] if kind == "halving" else None
        value = float(rest.split(":")[0]) if rest else float(kind)
        self.sleep = (lambda: value) if kind == "fixed" else (lambda: random.uniform(0, value))

    def describe(self, job):
        return TrialRecord(attempts=job.attempts)

    def run(self, job) -> TrialOutcome:
        r, rung = job.params["lora_r"], job.rung
        time.sleep(self.sleep())
        if self.log is None:
            return TrialOutcome(Outcome.COMPLETE, TrialRecord(), values=[float(r)])
        with open(self.log, "a") as fh:
            fh.write(f"{r} {rung}\n")
        record = TrialRecord(rung=rung, rung_values={str(k): r / 100 for k in range(rung + 1)})
        if rung < 2:
            return TrialOutcome(Outcome.PAUSED, record)
        return TrialOutcome(Outcome.COMPLETE, record, values=[r / 100])


def grid_config(url: str, grid_size: int, study: str, halving: bool = False):
    return load_config(
        preset="demo",
        sets=[
            f"study.grid={{lora_r={list(range(1, grid_size + 1))}}}",
            f'storage.url="{url}"',
            f'study.name="{study}"',
            "storage.heartbeat_interval=5",
            "storage.grace_period=30",
            *(
                ["study.schedule='successive_halving'", "study.rungs=[0.111, 0.333, 1.0]", "study.eta=3"]
                if halving
                else []
            ),
        ],
    )


def create(url: str, grid_size: int, study: str, halving: bool = False):
    config = grid_config(url, grid_size, study, halving)
    storage = open_storage(url, heartbeat_interval=5, grace_period=30)
    return optuna.create_study(
        study_name=study, storage=storage, direction="maximize", load_if_exists=True, sampler=make_sampler(config)
    ), config


def main() -> None:
    url, grid_size, sleep, studies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # As `optuna-search` does: the expected warnings (heartbeat with ask/tell, the Optuna
    # "experimental" features it relies on) are filtered, anything else still shows.
    quiet_libraries()
    for name in studies:
        study, config = create(url, grid_size, name, halving=sleep.startswith("halving"))
        # As `run --worker`: a grid's worker ends when the rest is running elsewhere; under
        # successive halving it waits, since the next rung's work follows.
        Scheduler(study, config, SleepRunner(study, sleep)).run(wait_for_others=config.halving)


if __name__ == "__main__":
    main()
