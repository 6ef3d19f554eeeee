"""The scheduler's states and decisions, on real SQLite studies with fake runners (no
model): what runs next, when a study is done, the time budget, samplers that never spend
a trial on a point twice (also across resumes and between two processes), failing
points that stop a search instead of looping, and successive halving over checkpoints."""

import datetime as dt

import optuna
import pytest
from conftest import TPE_SETS
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from optuna_search.core import TrialRecord
from optuna_search.core._params import point_key
from optuna_search.search.front._config import load_config
from optuna_search.search.front._summary import summarize
from optuna_search.search.loop import _halving as halving
from optuna_search.search.loop._schedule import (
    BudgetStop,
    Done,
    New,
    Promote,
    PruneRest,
    Status,
    Train,
    TrialSchedule,
    Wait,
    point_status,
    read_state,
)
from optuna_search.search.loop._schedule import decide as _decide
from optuna_search.search.loop._scheduler import Outcome, Scheduler, TrialOutcome
from optuna_search.search.setup._space import make_sampler, n_target, space_size
from optuna_search.storage.study._internals import paused_at
from optuna_search.storage.study._storages import open_storage


def decide(state, **kw):
    return _decide(TrialSchedule(), state, **kw)


GRID = load_config(preset="demo")  # lora_r in [4, 8, 16]
TPE = load_config(preset="demo-search", sets=[*TPE_SETS, "study.n_trials=3"])
DIST = {"lora_r": CategoricalDistribution([4, 8, 16])}
FIELDS = list(GRID.data.fields)


def _t(state, r, error=None):
    return create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"lora_r": r},
        distributions=DIST,
        user_attrs={"error": error} if error else {},
    )


def _timed(r, seconds, start):
    t = create_trial(value=0.5, params={"lora_r": r}, distributions=DIST)
    t.datetime_start, t.datetime_complete = start, start + dt.timedelta(seconds=seconds)
    return t


def _running(r):
    return create_trial(state=TrialState.RUNNING, params={"lora_r": r}, distributions=DIST)


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
    assert decide(state, retry_failed=False) == Train(state.points[2].key)
    assert decide(state, retry_failed=True) == Train(state.points[1].key)
    waiting = read_state(GRID, [_t(C, 4), _t(W, 16)])
    assert decide(waiting, retry_failed=False) == Train("lora_r=16")


def test_waiting_for_others_and_done():
    C = TrialState.COMPLETE
    state = read_state(GRID, [_t(C, 4), _t(C, 8), _running(16)])
    assert decide(state, retry_failed=False) == Wait(("lora_r=16",))
    done = read_state(GRID, [_t(C, 4), _t(C, 8), _t(C, 16)])
    assert decide(done, retry_failed=False) == Done() and done.finished == 3


def test_sampler_study_counts_finished_points_and_resumes_interrupted_ones():
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    lr = FloatDistribution(1e-3, 1e-2, log=True)

    def mk(s, r, v):
        return create_trial(
            state=s,
            value=0.5 if s == C else None,
            params={"lora_r": r, "learning_rate": v},
            distributions={"lora_r": CategoricalDistribution([2, 4, 8, 12, 16, 24, 32]), "learning_rate": lr},
        )

    state = read_state(TPE, [mk(C, 4, 2e-3), mk(P, 8, 3e-3)])
    assert state.finished == 2 and decide(state, retry_failed=False) == New()
    interrupted = read_state(TPE, [mk(C, 4, 2e-3), mk(F, 8, 3e-3)])
    assert decide(interrupted, retry_failed=False) == Train(
        interrupted.points[1].key
    )  # same params, from its checkpoint
    full = read_state(TPE, [mk(C, 4, 2e-3), mk(P, 8, 3e-3), mk(C, 16, 5e-3)])
    assert decide(full, retry_failed=False) == Done()


def test_time_budget_starts_no_trial_that_cannot_finish():
    state = read_state(GRID, [_timed(4, 600, dt.datetime(2026, 1, 1))])
    assert isinstance(decide(state, retry_failed=False, seconds_left=300), BudgetStop)
    assert isinstance(decide(state, retry_failed=False, seconds_left=900), Train)
    # A point with a checkpoint can always make progress before the deadline.
    assert isinstance(decide(state, retry_failed=False, seconds_left=300, checkpointed=lambda p: True), Train)
    assert isinstance(decide(state, retry_failed=False, seconds_left=0, checkpointed=lambda p: True), BudgetStop)
    # Seen with --time-budget 1s: "a trial takes about ?". Before any trial finished, it says so.
    stop = decide(read_state(GRID, []), retry_failed=False, seconds_left=0)
    assert isinstance(stop, BudgetStop) and "?" not in str(stop.__dict__)
    assert "no trial has finished yet" in str(stop.__dict__)


class _Runner:
    """Stands in for the trial runner: records what it ran and says how it ended."""

    def __init__(self, values, fail=(), during=None):
        self.values, self.fail, self.during, self.ran = values, set(fail), during, []

    def describe(self, job):
        return TrialRecord(attempts=job.attempts)

    def run(self, job):
        params = dict(job.params)
        self.ran.append((params, job.position, job.attempts, job.rung))
        if self.during is not None:
            self.during(job)
        if point_key(params) in self.fail:
            return TrialOutcome(Outcome.FAILED, TrialRecord(error="RuntimeError: cannot allocate"))
        return TrialOutcome(Outcome.COMPLETE, TrialRecord(), values=[self.values(params)])


def _storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=5, grace_period=30)


def _real_study(tmp_path, config):
    return optuna.create_study(
        study_name=config.study.name,
        storage=_storage(tmp_path),
        sampler=make_sampler(config),
        directions=config.directions(),
    )


def _reload(tmp_path, config):
    return optuna.load_study(study_name=config.study.name, storage=_storage(tmp_path), sampler=make_sampler(config))


def test_the_loop_runs_each_grid_point_once_and_again_adds_nothing(tmp_path):
    study = _real_study(tmp_path, GRID)
    runner = _Runner(lambda p: p["lora_r"] / 100)
    outcome = Scheduler(study, GRID, runner).run()
    assert [r[0]["lora_r"] for r in runner.ran] == [4, 8, 16]
    assert [r[1] for r in runner.ran] == [(1, 3), (2, 3), (3, 3)]
    assert outcome.ran == 3 and outcome.state.finished == 3
    again = Scheduler(study, GRID, _Runner(lambda p: 0.0)).run()
    assert again.ran == 0 and len(study.trials) == 3


def test_a_shrunk_grid_runs_with_a_stale_retry_of_a_point_it_dropped(tmp_path):
    """Seen: shrinking the grid while a killed trial waited for its retry ended in Optuna's
    `ValueError: CategoricalDistribution does not support dynamic value space`."""
    study = _real_study(tmp_path, GRID)
    study.add_trial(_t(TrialState.COMPLETE, 4))
    # A trial of r = 16 killed and re-queued WAITING by the stale-trial retry.
    study.add_trial(create_trial(state=TrialState.WAITING, params={"lora_r": 16}, distributions=DIST))
    small = load_config(preset="demo", sets=["study.grid={lora_r=[4, 8]}"])
    runner = _Runner(lambda p: 0.2)
    outcome = Scheduler(_reload(tmp_path, small), small, runner).run()
    assert [r[0] for r in runner.ran] == [{"lora_r": 8}]  # not the WAITING 16 that ask() would take up
    set_aside = [t for t in study.get_trials() if t.params == {"lora_r": 16} and t.state == TrialState.FAIL]
    assert len(set_aside) == 1 and "no longer in the grid" in set_aside[0].user_attrs["interrupted"]
    assert outcome.state.finished == 2 and not study.get_trials(states=(TrialState.WAITING,))


def test_a_grid_that_adds_values_to_a_study_is_refused_before_anything_is_written(tmp_path):
    from optuna_search.core import UserError
    from optuna_search.search.setup._space import fitted_distributions

    study = _real_study(tmp_path, GRID)
    Scheduler(study, GRID, _Runner(lambda p: 0.1)).run()
    wider = load_config(preset="demo", sets=["study.grid={lora_r=[4, 8, 16, 32]}"])
    with pytest.raises(UserError, match=r"lora_r adds \[32\] to the values \[4, 8, 16\].*--warm-start-from"):
        fitted_distributions(wider, study.get_trials(), "study 'demo'", "sqlite:///s.db")
    other_kind = load_config(
        preset="demo",
        sets=[
            "study.grid={}",
            "study.sampler='tpe'",
            "study.n_trials=3",
            "study.search_space={lora_r={low=4, high=16}}",
        ],
    )
    with pytest.raises(UserError, match="lora_r is int \\[4, 16\\] here, categorical"):
        fitted_distributions(other_kind, study.get_trials(), "study 'demo'", "sqlite:///s.db")
    assert (
        fitted_distributions(load_config(preset="demo", sets=["study.grid={lora_r=[16, 4]}"]), study.get_trials())[
            "lora_r"
        ]
        == DIST["lora_r"]
    )


def _categorical(sampler, n, space="{lora_r=[4, 8, 12, 16]}"):
    return load_config(
        preset="demo-search",
        sets=[
            *TPE_SETS,
            f"study.sampler='{sampler}'",
            f"study.n_trials={n}",
            "study.pruner='none'",
            f"study.search_space={space}",
        ],
    )


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "brute_force"])
def test_no_sampler_spends_a_trial_on_a_point_twice(tmp_path, sampler):
    config = _categorical(sampler, 4)
    study = _real_study(tmp_path, config)
    runner = _Runner(lambda p: p["lora_r"] / 100)
    Scheduler(study, config, runner).run()
    assert sorted(r[0]["lora_r"] for r in runner.ran) == [4, 8, 12, 16]
    assert len(study.trials) == 4 and not any("duplicate_of" in t.user_attrs for t in study.trials)


def test_n_trials_above_a_finite_space_is_clipped_and_the_study_completes(tmp_path):
    config = _categorical("tpe", 10, "{lora_r=[4, 8]}")
    assert space_size(config) == 2 and n_target(config) == 2
    study = _real_study(tmp_path, config)
    outcome = Scheduler(study, config, _Runner(lambda p: 0.5)).run()
    assert outcome.ran == 2 and outcome.state.done
    text = summarize(study, config, outcome.state, ran=0, budget_reached=False).text
    assert "every point of the search space has a finished trial; n_trials = 10 was clipped to its 2 points" in text


def test_a_resumed_search_proposes_new_points_not_its_earlier_ones(tmp_path):
    """The sampler is seeded by study.seed and the trial number: a study resumed in a new
    process must not replay the first proposals (seen: TPE re-seeded on every start
    proposed trial 0's exact params again)."""
    config = load_config(preset="demo-search", sets=[*TPE_SETS, "study.n_trials=2", "study.pruner='none'"])
    study = _real_study(tmp_path, config)
    Scheduler(study, config, _Runner(lambda p: 0.5)).run()
    more = load_config(preset="demo-search", sets=[*TPE_SETS, "study.n_trials=4", "study.pruner='none'"])
    Scheduler(_reload(tmp_path, more), more, _Runner(lambda p: 0.5)).run()
    points = [point_key(t.params) for t in _reload(tmp_path, more).trials]
    assert len(points) == 4 and len(set(points)) == 4


def test_two_processes_with_the_same_seed_never_run_one_point_twice_nor_exceed_n_trials(tmp_path):
    """Two `run` on one new study: the second starts while the first's trial is RUNNING
    (seen: both proposed the same point, the second recorded it as a PRUNED duplicate and
    the study ended 3/2)."""
    config = _categorical("tpe", 2)
    a_study = _real_study(tmp_path, config)
    b_runner = _Runner(lambda p: 0.6)
    a_runner = _Runner(
        lambda p: 0.5,
        during=lambda trial: Scheduler(_reload(tmp_path, config), config, b_runner).run(wait_for_others=False),
    )
    Scheduler(a_study, config, a_runner).run()
    trials = _reload(tmp_path, config).trials
    assert len(trials) == 2 and len(a_runner.ran) == len(b_runner.ran) == 1
    assert a_runner.ran[0][0] != b_runner.ran[0][0]
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_a_failing_point_of_a_search_is_not_sampled_forever(tmp_path):
    """Seen: a sampler study whose point fails started the same point again at once,
    forever (35 failed trials in 30 s). A failed configuration counts toward n_trials;
    the study stops and the exit code names it."""
    config = _categorical("tpe", 3)
    study = _real_study(tmp_path, config)
    runner = _Runner(lambda p: 0.5, fail={"lora_r=8", "lora_r=4", "lora_r=12", "lora_r=16"})
    outcome = Scheduler(study, config, runner).run()
    assert len(runner.ran) == 3 and len({point_key(r[0]) for r in runner.ran}) == 3
    summary = summarize(study, config, outcome.state, ran=outcome.ran, budget_reached=False)
    assert summary.exit_code == 1 and any("is failed (RuntimeError: cannot allocate)" in p for p in summary.problems)
    assert "re-run failed points with: optuna-search run --retry-failed" in summary.problems


# -- successive halving ---------------------------------------------------------------------
def test_halving_decisions_rung_by_rung():
    C, S = halving.Config, Status
    configs = [C(f"k{i}", S.PENDING, -1, {}, i) for i in range(9)]
    assert halving.next_action(configs, {}, n_configs=9, n_rungs=3, eta=3) == Train("k0", 0)
    at0 = [C(f"k{i}", S.PAUSED, 0, {0: i / 10}, i) for i in range(9)]
    assert halving.next_action(at0, {}, n_configs=9, n_rungs=3, eta=3) == Promote(0, ("k8", "k7", "k6"))
    assert halving.next_action(at0, {0: ["k8", "k7", "k6"]}, n_configs=9, n_rungs=3, eta=3) == PruneRest(
        0, tuple(f"k{i}" for i in range(6))
    )
    pruned = [C(f"k{i}", S.PRUNED, 0, {0: i / 10}, i) for i in range(6)] + at0[6:]
    assert halving.next_action(pruned, {0: ["k8", "k7", "k6"]}, n_configs=9, n_rungs=3, eta=3) == Train("k8", 1)
    running = [C("k0", S.RUNNING, -1, {}, 0)] + [C(f"k{i}", S.PAUSED, 0, {0: 0.1}, i) for i in range(1, 3)]
    assert halving.next_action(running, {}, n_configs=3, n_rungs=2, eta=3) == Wait(("k0",))
    assert halving.next_action(configs[:2], {}, n_configs=4, n_rungs=2, eta=2) == New(0)
    # A configuration that failed with an error is not promoted, not pruned, not waited for.
    failed = [C("k0", S.FAILED, -1, {}, 0)] + [C(f"k{i}", S.PAUSED, 0, {0: i / 10}, i) for i in range(1, 3)]
    assert halving.next_action(failed, {}, n_configs=3, n_rungs=2, eta=3) == Promote(0, ("k2",))
    assert halving.next_action(failed, {0: ["k2"]}, n_configs=3, n_rungs=2, eta=3) == PruneRest(0, ("k1",))
    # A promotion that a tie decided is named (the scheduler warns).
    tie = [C(f"k{i}", S.PAUSED, 0, {0: 0.5}, i) for i in range(4)]
    assert halving.next_action(tie, {}, n_configs=4, n_rungs=2, eta=2) == Promote(0, ("k0", "k1"))
    assert halving.tied_at_the_cut(tie, 0, 2) == ["k0", "k1", "k2", "k3"] and halving.tied_at_the_cut(at0, 0, 3) == []
    # 12 points, eta 3, rungs 1/9, 1/3, 1: 12 to 1/9, 4 to 1/3, 2 finalists = 3.56 trainings (30% of the grid).
    assert halving.cost(12, [1 / 9, 1 / 3, 1.0], 3) == pytest.approx(12 / 9 + 4 * 2 / 9 + 2 * 2 / 3)


def test_a_rungs_decision_names_its_paired_evidence_for_each_configuration_left_out():
    """The report's and the note's account of a rung: who went on, and for each one left
    out whether the same validation examples show it worse than the last one promoted."""
    from optuna_search.dashboards import rung_decisions, rung_line

    config = load_config(
        preset="demo",
        sets=[
            "study.grid={lora_r=[4, 8, 16]}",
            "study.schedule='successive_halving'",
            "study.rungs=[0.5, 1.0]",
            "study.eta=3",
        ],
    )

    def at_rung(r, right):  # ``right`` of 100 validation examples right at the rung
        examples = [1.0] * right + [0.0] * (100 - right)
        return TrialRecord(params={"lora_r": r}, rung=0, rung_values={"0": right / 100}, rung_examples={"0": examples})

    records = [at_rung(4, 80), at_rung(8, 50), at_rung(16, 79)]
    (d,) = rung_decisions(records, {"0": [point_key({"lora_r": 4})]}, config)
    assert [(e.config, e.promoted) for e in d.entries] == [
        ("lora_r=4", True),
        ("lora_r=16", False),
        ("lora_r=8", False),
    ]
    top, close, far = d.entries
    assert top.p_worse is None and far.p_worse < 0.001 and close.p_worse > 0.05
    assert d.unsupported == [close]  # left out without evidence: the examples cannot tell r=16 from r=4
    line = rung_line(d)
    assert line.startswith("Rung 1 (50% of training, accuracy): went on lora_r=4 (0.8000)")
    assert "lora_r=8 (0.5000, worse at p = " in line and "lora_r=16 (0.7900, not shown worse: p = " in line


class _Halving:
    """A fake runner for successive halving: pauses at every rung but the last with the
    metric ``lora_r / 100`` (the larger rank looks better), completes at the last."""

    def __init__(self, rungs, interrupt_at=None):
        self.rungs, self.interrupt_at, self.ran, self.tags = rungs, interrupt_at, [], {}

    def describe(self, job):
        return TrialRecord(attempts=job.attempts)

    def run(self, job):
        r, rung = job.params["lora_r"], job.rung
        self.ran.append((r, rung))
        self.tags.setdefault(r, set()).add((job.number, job.position))
        if self.interrupt_at == len(self.ran):
            return TrialOutcome(Outcome.INTERRUPTED, TrialRecord(), stop=KeyboardInterrupt())
        values = {str(k): r / 100 for k in range(rung + 1)}
        record = TrialRecord(rung=rung, rung_values=values)
        if rung < len(self.rungs) - 1:
            return TrialOutcome(Outcome.PAUSED, record)
        return TrialOutcome(Outcome.COMPLETE, record, values=[r / 100])


def _halving_config():
    return load_config(
        preset="demo",
        sets=[
            "study.grid={lora_r=[1, 2, 3, 4, 5, 6, 7, 8, 9]}",
            "study.schedule='successive_halving'",
            "study.rungs=[0.111, 0.333, 1.0]",
            "study.eta=3",
        ],
    )


def test_successive_halving_over_a_grid_trains_each_rung_once_and_ends_complete_or_pruned(tmp_path):
    config = _halving_config()
    study = _real_study(tmp_path, config)
    runner = _Halving(config.study.rungs)
    Scheduler(study, config, runner).run()
    assert [x for x in runner.ran if x[1] == 0] == [(r, 0) for r in range(1, 10)]
    assert sorted(r for r, rung in runner.ran if rung == 1) == [7, 8, 9]
    assert [r for r, rung in runner.ran if rung == 2] == [9]
    trials = study.get_trials()
    assert len(trials) == 9  # one trial per configuration, across rungs
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] + ["PRUNED"] * 8
    assert study.user_attrs["halving"]["promoted"] == {"0": ["lora_r=9", "lora_r=8", "lora_r=7"], "1": ["lora_r=9"]}
    # Seen: "[trial 13/12 ...]" at the second rung. A configuration keeps one trial number
    # and one place k/N over its rungs, and k never passes N.
    by_number = {t.params["lora_r"]: t.number for t in trials}
    assert runner.tags == {r: {(by_number[r], (r, 9))} for r in range(1, 10)}
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)  # nothing paused is ever mistaken for a dead trial
    assert not [t for t in study.get_trials() if t.state == TrialState.FAIL]


def test_successive_halving_resumes_where_it_was_after_an_interruption(tmp_path):
    config = _halving_config()
    study = _real_study(tmp_path, config)
    first = _Halving(config.study.rungs, interrupt_at=11)  # during the second rung
    with pytest.raises(KeyboardInterrupt):
        Scheduler(study, config, first).run()
    interrupted = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert len(interrupted) == 3 and all(paused_at(t) is not None for t in interrupted)  # paused, not failed
    assert not [t for t in study.get_trials() if t.state == TrialState.FAIL]
    second = _Halving(config.study.rungs)
    Scheduler(_reload(tmp_path, config), config, second).run()
    trained = first.ran[:-1] + second.ran
    assert sorted(trained) == sorted([(r, 0) for r in range(1, 10)] + [(7, 1), (8, 1), (9, 1), (9, 2)])
    assert sorted(t.state.name for t in _reload(tmp_path, config).get_trials()) == ["COMPLETE"] + ["PRUNED"] * 8


def test_a_result_that_cannot_be_recorded_while_the_run_stops_is_said_with_what_it_loses(tmp_path, caplog):
    """Seen: a trial's result that failed to record during a stop was logged at DEBUG, so
    nobody learned that its record was lost. The run still stops; the error says which
    trial, why, and what happens to it."""
    from optuna_search.storage import Ledger

    study = _real_study(tmp_path, GRID)

    class _Stopped(_Runner):
        def run(self, job):
            self.ran.append(dict(job.params))
            return TrialOutcome(Outcome.INTERRUPTED, TrialRecord(interrupted="SIGTERM"), stop=KeyboardInterrupt())

    def broken(*a, **kw):
        raise OSError("disk I/O error")

    real = Ledger.interrupt
    Ledger.interrupt = broken
    try:
        with caplog.at_level("ERROR", logger="optuna_search"), pytest.raises(KeyboardInterrupt):
            Scheduler(study, GRID, _Stopped(lambda p: 0.0)).run()
    finally:
        Ledger.interrupt = real
    assert "trial 0 (interrupted) could not be recorded while the run stopped (OSError: disk I/O error)" in caplog.text
    assert "the next run resumes it from its last checkpoint" in caplog.text
