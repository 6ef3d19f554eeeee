"""Pins the Optuna private API that storage/_internals.py wraps, on the installed Optuna:
an Optuna upgrade that changes one of these fails here, not in the product."""

import time

import optuna
from optuna.trial import TrialState
from sqlalchemy import text

from optuna_search.storage.study import _internals as oi
from optuna_search.storage.study._storages import open_storage


def _study(tmp_path, **kw):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", **kw)
    return optuna.create_study(storage=storage, study_name="s", direction="maximize")


def test_engine_ids_and_attrs(tmp_path):
    study = _study(tmp_path)
    trial = study.ask()
    with oi.engine_of(study).connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM trials WHERE study_id = :s"), {"s": oi.study_id(study)}).scalar()
            == 1
        )
    oi.set_trial_user_attr(study, trial, "k", 1)
    oi.set_trial_system_attr(study, trial, "g", 2)
    t = study.get_trials()[0]
    assert t.user_attrs["k"] == 1 and t.system_attrs["g"] == 2 and oi.trial_id(trial) == t._trial_id
    assert oi.fail_trial(study, trial) and study.get_trials()[0].state == TrialState.FAIL
    assert not oi.fail_trial(study, trial)  # already finished


def test_heartbeat_thread_and_orphan_query(tmp_path):
    study = _study(tmp_path, heartbeat_interval=1, grace_period=2)
    assert oi.heartbeat_enabled(study)
    beating, orphan = study.ask(), study.ask()
    with oi.heartbeat(study, beating):
        time.sleep(0.3)
    time.sleep(1.1)
    found = oi.running_trials_without_heartbeat(study, study.get_trials(), older_than_s=1)
    assert [t.number for t in found] == [orphan.number]


def test_grid_sampler_enumeration(tmp_path):
    sampler = optuna.samplers.GridSampler({"lora_r": [4, 8, 16], "lr": [1.0, 2.0]}, seed=3)
    points = oi.grid_points(sampler)
    assert sorted(tuple(sorted(p.items())) for p in points) == sorted(
        (("lora_r", r), ("lr", lr)) for r in (4, 8, 16) for lr in (1.0, 2.0)
    )
    assert oi.grid_search_space(sampler) == {"lora_r": [4, 8, 16], "lr": [1.0, 2.0]}
    # grid_id i is the point GridSampler itself hands out for grid_id i.
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    gid = (
        trial.system_attrs["grid_id"]
        if hasattr(trial, "system_attrs")
        else study.get_trials()[0].system_attrs["grid_id"]
    )
    assert {
        "lora_r": trial.suggest_categorical("lora_r", [4, 8, 16]),
        "lr": trial.suggest_categorical("lr", [1.0, 2.0]),
    } == points[gid]


def test_pausing_claiming_and_live_trials(tmp_path):
    """Successive halving pauses a RUNNING trial without a heartbeat row (so the stale
    check leaves it alone), and resumes it, or a WAITING retry, as a live Trial."""
    from optuna.distributions import IntDistribution
    from optuna.storages import fail_stale_trials
    from optuna.trial import create_trial

    study = _study(tmp_path, heartbeat_interval=1, grace_period=2)
    trial = study.ask({"x": IntDistribution(0, 2)})
    with oi.heartbeat(study, trial):
        time.sleep(0.2)
    oi.pause(study, trial, rung=0)
    time.sleep(2.2)
    fail_stale_trials(study)
    (t,) = study.get_trials()
    assert t.state == TrialState.RUNNING and oi.paused_at(t) == 0
    assert oi.running_trials_without_heartbeat(study, study.get_trials(), older_than_s=0) == []
    oi.unpause(study, trial)
    live = oi.live_trial(study, study.get_trials()[0])
    live.report(0.5, step=1)
    assert oi.paused_at(study.get_trials()[0]) is None and study.get_trials()[0].intermediate_values == {1: 0.5}
    study.add_trial(create_trial(state=TrialState.WAITING, params={"x": 1}, distributions={"x": IntDistribution(0, 2)}))
    waiting = study.get_trials()[1]
    claimed = oi.claim_waiting(study, waiting)
    assert claimed is not None and claimed.params == {"x": 1} and study.get_trials()[1].state == TrialState.RUNNING
    assert oi.claim_waiting(study, waiting) is None  # taken already
    assert oi.distribution_contains(IntDistribution(0, 2), 2) and not oi.distribution_contains(IntDistribution(0, 2), 3)


def test_a_resumed_trial_has_a_heartbeat_before_its_thread_starts(tmp_path):
    """Seen once in the two-worker successive-halving test: a paused trial resumed by one
    worker had no heartbeat row until its heartbeat thread started (outside the claim
    lock), and another worker's check took it, started long ago, for orphaned: failed,
    its configuration trained again. A trial is never RUNNING, unpaused, without a row."""
    from optuna.distributions import IntDistribution

    from optuna_search.core import TrialRecord
    from optuna_search.storage import Ledger

    study = _study(tmp_path, heartbeat_interval=1, grace_period=30)
    ledger, other = Ledger(study), Ledger(study)
    trial = ledger.new({"x": IntDistribution(0, 2)}, {"x": 1})
    ledger.pause(trial, TrialRecord(), 0)
    time.sleep(0.05)
    ledger.resume_paused(study.get_trials()[0])
    # Another worker reconciles before this one's heartbeat thread runs; 0 s: any age.
    assert other.reconcile(grace_period=0) == 0
    assert study.get_trials()[0].state == TrialState.RUNNING
    fresh = ledger.new({"x": IntDistribution(0, 2)}, {"x": 2})  # the same for a new trial
    assert other.reconcile(grace_period=0) == 0 and study.get_trials()[fresh.number].state == TrialState.RUNNING


def _commits(study):
    from sqlalchemy import event

    seen = []
    event.listen(oi.engine_of(study), "commit", lambda conn: seen.append(1))
    return seen


def test_a_trials_record_and_note_are_written_in_one_transaction(tmp_path):
    """The study machinery's cost per trial (benchmarks/study_overhead.py): a record of
    many attrs, and the dashboard's note, cost one round trip, not one per key."""
    import optuna_dashboard

    study = _study(tmp_path)
    trial = study.ask()
    commits = _commits(study)
    attrs = {f"field_{i}_accuracy": i / 10 for i in range(20)}
    long_note = "x" * 5000  # three of the dashboard's 2,045-character chunks
    oi.set_trial_user_attrs(study, trial, attrs, note=long_note)
    assert len(commits) == 1
    assert study.get_trials()[0].user_attrs == attrs
    assert optuna_dashboard.get_note(trial) == long_note
    commits.clear()
    oi.set_trial_system_attrs(study, trial, {"a": 1, "b": [2]})
    assert len(commits) == 1 and study.get_trials()[0].system_attrs["b"] == [2]


def test_a_shorter_note_replaces_a_longer_one_as_the_dashboard_would(tmp_path):
    import optuna_dashboard

    study = _study(tmp_path)
    trial, other = study.ask(), study.ask()
    optuna_dashboard.save_note(other, "the other trial's note")
    oi.set_trial_user_attrs(study, trial, {}, note="y" * 5000)
    oi.set_trial_user_attrs(study, trial, {}, note="short")
    assert optuna_dashboard.get_note(trial) == "short"
    assert optuna_dashboard.get_note(other) == "the other trial's note"
    ver = study._storage.get_study_system_attrs(study._study_id)[f"dashboard:{trial._trial_id}:note_ver"]
    assert ver == 2  # the dashboard's editor compares versions before it saves


def test_attrs_and_note_on_a_storage_without_sql():
    import optuna_dashboard

    study = optuna.create_study()  # in memory
    trial = study.ask()
    oi.set_trial_user_attrs(study, trial, {"a": 1}, note="n")
    oi.set_trial_system_attrs(study, trial, {"b": 2})
    t = study.get_trials()[0]
    assert t.user_attrs == {"a": 1} and t.system_attrs["b"] == 2 and optuna_dashboard.get_note(trial) == "n"
