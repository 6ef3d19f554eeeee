"""Cost of the project's study machinery per trial, against bare Optuna.

Both sides run the same number of trials of a no-op objective over the same grid on a
fresh SQLite file:
- bare: ``optuna.create_study(storage="sqlite:///…", sampler=GridSampler) + optimize``;
- project: ``open_storage`` (heartbeat + stale-trial retry, WAL), stale-trial
  reconciliation, and the ``Scheduler`` (claim lock, per-point state, trial creation
  through ``GridPointSampler``, heartbeat) with a runner that only tells the value.

    python benchmarks/study_overhead.py [--trials 60] [--repeats 7] [--smoke]

``--smoke``: 6 trials, 1 repeat (seconds; the suite runs it to its last line).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from optuna_search.core import TrialRecord
from optuna_search.search import load_config
from optuna_search.search.loop import Outcome, Scheduler, TrialOutcome
from optuna_search.search.setup import make_sampler
from optuna_search.storage import open_storage


class NoopRunner:
    def __init__(self, study):
        self.study = study

    def describe(self, job):
        return TrialRecord(attempts=job.attempts)

    def run(self, job):  # the scheduler holds the trial's heartbeat meanwhile
        return TrialOutcome(Outcome.COMPLETE, TrialRecord(), values=[0.0])


def bare(n: int, tmp: Path) -> float:
    t0 = time.perf_counter()
    study = optuna.create_study(
        storage=f"sqlite:///{tmp / 'bare.db'}",
        sampler=optuna.samplers.GridSampler({"lora_r": list(range(1, n + 1))}, seed=0),
        direction="maximize",
    )
    study.optimize(lambda t: (t.suggest_categorical("lora_r", list(range(1, n + 1))), 0.0)[1], n_trials=n)
    assert len(study.trials) == n
    return time.perf_counter() - t0


def project(n: int, tmp: Path) -> float:
    config = load_config(
        preset="demo",
        sets=[f"study.grid={{lora_r={list(range(1, n + 1))}}}", f'storage.url="sqlite:///{tmp / "project.db"}"'],
    )
    t0 = time.perf_counter()
    storage = open_storage(
        config.storage.url,
        heartbeat_interval=config.storage.heartbeat_interval,
        grace_period=config.storage.grace_period,
    )
    study = optuna.create_study(storage=storage, sampler=make_sampler(config), direction="maximize")
    optuna.storages.fail_stale_trials(study)
    outcome = Scheduler(study, config, NoopRunner(study)).run()
    assert outcome.ran == n and outcome.state.finished == n
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="6 trials, 1 repeat: that it runs, not a figure")
    args = ap.parse_args()
    if args.smoke:
        args.trials, args.repeats = 6, 1
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    b, p = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            b.append(bare(args.trials, Path(d)))
        with tempfile.TemporaryDirectory() as d:
            p.append(project(args.trials, Path(d)))
    mb, mp = statistics.median(b), statistics.median(p)
    print(f"{args.trials} no-op trials on SQLite, {args.repeats} interleaved repeats (min / median):")
    print(f"  bare optuna:     {min(b):.2f}s / {mb:.2f}s  ({1000 * min(b) / args.trials:.1f} ms/trial at best)")
    print(f"  optuna-search:   {min(p):.2f}s / {mp:.2f}s  ({1000 * min(p) / args.trials:.1f} ms/trial at best)")
    print(f"median ratio {mp / mb:.2f}; the best runs are the least disturbed by the rest of the machine:")
    print(f"overhead ratio = {min(p) / min(b):.2f}")


if __name__ == "__main__":
    main()
