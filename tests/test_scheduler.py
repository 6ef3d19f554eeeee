"""The scheduler's states and decisions, on in-memory studies built with create_trial
(no subprocess, no model): what runs next, when a study is done, the time budget, and
that a real loop runs every point exactly once."""

import datetime as dt

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from optuna_search.search._config import load_config
from optuna_search.search._scheduler import (
    BudgetStop, Done, RunNew, RunPoint, RunWaiting, Scheduler, Status, WaitForOthers, decide, point_status, read_state,
)
from optuna_search.search._space import distributions, make_sampler
from optuna_search.storage._storages import open_storage

GRID = load_config(preset="demo")  # lora_r in [4, 8, 16]
TPE = load_config(preset="demo-search", sets=["study.n_trials=3"])
DIST = {"lora_r": CategoricalDistribution([4, 8, 16])}


def _t(state, r, error=None):
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, params={"lora_r": r},
                        distributions=DIST, user_attrs={"error": error} if error else {})


def _timed(r, seconds, start):
    t = create_trial(value=0.5, params={"lora_r": r}, distributions=DIST)
    t.datetime_start, t.datetime_complete = start, start + dt.timedelta(seconds=seconds)
    return t


def _running(r):
    t = create_trial(state=TrialState.RUNNING, params={"lora_r": r}, distributions=DIST)
    return t


def test_point_status_from_its_trials():
    C, F, W = TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING
    assert point_status([]) == Status.PENDING
    assert point_status([_t(F, 4), _t(C, 4)]) == Status.COMPLETE
    assert point_status([_t(F, 4, error="ValueError: NaN")]) == Status.FAILED
    assert point_status([_t(F, 4)]) == Status.PENDING  # interrupted: simply resumed
    assert point_status([_t(F, 4), _running(4)]) == Status.RUNNING
    assert point_status([_t(F, 4), _t(W, 4)]) == Status.WAITING
    assert point_status([_t(TrialState.PRUNED, 4)]) == Status.PRUNED


def test_grid_runs_points_in_grid_order_retries_first_failed_only_when_asked():
    C, F, W = TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING
    state = read_state(GRID, [_t(C, 4), _t(F, 8, error="boom")])
    assert [p.status for p in state.points] == [Status.COMPLETE, Status.FAILED, Status.PENDING]
    assert decide(state, retry_failed=False) == RunPoint(state.points[2])
    assert decide(state, retry_failed=True) == RunPoint(state.points[1])
    waiting = read_state(GRID, [_t(C, 4), _t(W, 16)])
    assert isinstance(decide(waiting, retry_failed=False), RunWaiting)


def test_waiting_for_others_and_done():
    C = TrialState.COMPLETE
    state = read_state(GRID, [_t(C, 4), _t(C, 8), _running(16)])
    assert decide(state, retry_failed=False) == WaitForOthers(("lora_r=16",))
    done = read_state(GRID, [_t(C, 4), _t(C, 8), _t(C, 16)])
    assert decide(done, retry_failed=False) == Done() and done.finished == 3


def test_sampler_study_counts_finished_trials_and_resumes_interrupted_points():
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    lr = FloatDistribution(1e-3, 1e-2, log=True)
    mk = lambda s, r, v: create_trial(state=s, value=0.5 if s == C else None, params={"lora_r": r, "learning_rate": v},
                                      distributions={"lora_r": CategoricalDistribution([2, 4, 8, 12, 16, 24, 32]), "learning_rate": lr})
    state = read_state(TPE, [mk(C, 4, 2e-3), mk(P, 8, 3e-3)])
    assert state.finished == 2 and decide(state, retry_failed=False) == RunNew()
    interrupted = read_state(TPE, [mk(C, 4, 2e-3), mk(F, 8, 3e-3)])
    assert decide(interrupted, retry_failed=False) == RunPoint(interrupted.points[1])  # same params, from its checkpoint
    full = read_state(TPE, [mk(C, 4, 2e-3), mk(P, 8, 3e-3), mk(C, 16, 5e-3)])
    assert decide(full, retry_failed=False) == Done()


def test_time_budget_starts_no_trial_that_cannot_finish():
    state = read_state(GRID, [_timed(4, 600, dt.datetime(2026, 1, 1))])
    assert isinstance(decide(state, retry_failed=False, seconds_left=300), BudgetStop)
    assert isinstance(decide(state, retry_failed=False, seconds_left=900), RunPoint)
    # A point with a checkpoint can always make progress before the deadline.
    assert isinstance(decide(state, retry_failed=False, seconds_left=300, checkpointed=lambda p: True), RunPoint)
    assert isinstance(decide(state, retry_failed=False, seconds_left=0, checkpointed=lambda p: True), BudgetStop)


class _Runner:
    budget_stopped = False

    def __init__(self, study, values):
        self.study, self.values, self.ran = study, values, []

    def run(self, trial, *, position, attempts):
        self.ran.append((dict(trial.params), position, attempts))
        self.study.tell(trial, self.values(trial.params))


def _real_study(tmp_path, config):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=5, grace_period=30)
    return optuna.create_study(study_name=config.study.name, storage=storage, sampler=make_sampler(config),
                               directions=config.directions())


def test_the_loop_runs_each_grid_point_once_and_again_adds_nothing(tmp_path):
    study = _real_study(tmp_path, GRID)
    runner = _Runner(study, lambda p: p["lora_r"] / 100)
    outcome = Scheduler(study, GRID, runner, distributions(GRID)).run()
    assert [r[0]["lora_r"] for r in runner.ran] == [4, 8, 16]
    assert [r[1] for r in runner.ran] == [(1, 3), (2, 3), (3, 3)]
    assert outcome.ran == 3 and outcome.state.finished == 3
    again = Scheduler(study, GRID, _Runner(study, lambda p: 0.0), distributions(GRID)).run()
    assert again.ran == 0 and len(study.trials) == 3


def test_a_sampler_proposing_a_finished_point_again_is_not_trained(tmp_path):
    config = load_config(preset="demo-search", sets=["study.sampler='random'", "study.n_trials=6", "study.pruner='none'",
                                                     "study.search_space={lora_r=[4, 8]}"])
    study = _real_study(tmp_path, config)
    runner = _Runner(study, lambda p: p["lora_r"] / 100)
    Scheduler(study, config, runner, distributions(config)).run()
    trained = [r[0]["lora_r"] for r in runner.ran]
    assert sorted(trained) == [4, 8]  # each point trained once...
    trials = study.get_trials()
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 6  # ...and the study still has its 6 trials
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(dups) == 4 and all(t.value == trials[t.user_attrs["duplicate_of"]].value for t in dups)


@pytest.mark.parametrize("n", [3])
def test_never_more_than_n_trials_are_started(tmp_path, n):
    config = load_config(preset="demo-search", sets=[f"study.n_trials={n}", "study.pruner='none'"])
    study = _real_study(tmp_path, config)
    Scheduler(study, config, _Runner(study, lambda p: 0.5), distributions(config)).run()
    assert len(study.trials) == n
