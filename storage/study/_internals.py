"""Every use of Optuna's private API and of its system-attr keys, in one place.

optuna-search needs a few things Optuna does not expose publicly: the SQLAlchemy engine
behind an ``RDBStorage`` (claim locks, the heartbeat table), trial and study ids for
storage calls, the heartbeat thread that ``Study.optimize`` starts (we run trials with
ask/tell so that the claim lock can cover trial creation), GridSampler's enumeration of
its grid and the system attrs it (and ``enqueue_trial``) writes, and the heartbeat row of
a trial that successive halving pauses between rungs. ``tests/test_internals.py`` pins
each of these on the installed Optuna, so an Optuna upgrade that changes one fails that
test, not the product.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from optuna_search.core import PAUSED_ATTR

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, Trial

# System attrs Optuna's GridSampler writes on a trial: the grid it belongs to and its point.
GRID_SEARCH_SPACE = "search_space"
GRID_ID = "grid_id"
# System attr ``Study.enqueue_trial`` writes (and the stale-trial retry copies).
# Ours: the rung at which successive halving paused a RUNNING trial (None once resumed).
PAUSED = PAUSED_ATTR


def storage_of(study: optuna.Study) -> Any:
    """The storage a study reads and writes through (possibly a caching wrapper)."""
    return study._storage


def rdb_backend(storage: Any) -> Any:
    """The ``RDBStorage`` behind Optuna's caching wrapper (or the storage itself)."""
    return getattr(storage, "_backend", storage)


def engine_of(study_or_storage: Any) -> Any:
    storage = getattr(study_or_storage, "_storage", study_or_storage)
    return rdb_backend(storage).engine


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: Trial | FrozenTrial) -> int:
    return trial._trial_id


def stored_trial(study: optuna.Study, trial: Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now: a live ``optuna.Trial`` caches its user attrs from when it
    was asked, so attrs written since (through the storage) are missing from it."""
    return study._storage.get_trial(trial._trial_id)


def live_trial(study: optuna.Study, frozen: Trial | FrozenTrial) -> Trial:
    """A live ``optuna.Trial`` on a RUNNING trial that this process did not ask for (a
    configuration successive halving resumes): report() and should_prune() work on it."""
    from optuna.trial import Trial

    return Trial(study, frozen._trial_id)


def claim_waiting(study: optuna.Study, frozen: FrozenTrial) -> Trial | None:
    """Start one particular WAITING trial (a retry of a killed one) as ``study.ask()``
    starts the oldest: RUNNING, with its params. None when another process took it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        if not study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
            return None
    except UpdateFinishedTrialError:
        return None
    return live_trial(study, frozen)


def heartbeat_enabled(study: optuna.Study) -> bool:
    return getattr(rdb_backend(study._storage), "heartbeat_interval", None) is not None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: Trial | FrozenTrial) -> Iterator[None]:
    """Record the trial's heartbeat while the block runs, as ``Study.optimize`` does."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def beat(study: optuna.Study, trial: Trial | FrozenTrial) -> None:
    """One heartbeat now (on a storage with heartbeats): a trial that becomes RUNNING has a
    heartbeat row from that instant, before its heartbeat thread starts. Without it, a
    resumed trial (no row since its pause, started long ago) looked orphaned to another
    worker's check in that gap, was failed, and its configuration trained again."""
    if heartbeat_enabled(study):
        rdb_backend(study._storage).record_heartbeat(trial._trial_id)


def set_trial_user_attr(study: optuna.Study, trial: Trial | FrozenTrial, key: str, value: Any) -> None:
    """Set a user attr on any trial of the study, finished ones included (used by
    ``storage._records`` only)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def set_trial_user_attrs(
    study: optuna.Study, trial: Trial | FrozenTrial, attrs: dict[str, Any], *, note: str | None = None
) -> None:
    """Set several user attrs of a trial, and (``note``) its optuna-dashboard note, in one
    transaction on a relational storage (one round trip per key otherwise).

    Optuna's storage API writes one attr per transaction, and optuna-dashboard's
    ``save_note`` reads every system attr of the study twice (all notes of all trials):
    a trial's record is ~20 attrs, so per trial that was the study machinery's main cost
    (``benchmarks/study_overhead.py``). The rows written are the ones those APIs write.
    """
    _set_trial_attrs(study, trial, attrs, system=False, note=note)


def _set_trial_attrs(
    study: optuna.Study, trial: Trial | FrozenTrial, attrs: dict[str, Any], *, system: bool, note: str | None = None
) -> None:
    from optuna.storages import RDBStorage

    backend = rdb_backend(study._storage)
    if not isinstance(backend, RDBStorage):
        setter = backend.set_trial_system_attr if system else backend.set_trial_user_attr
        for key, value in attrs.items():
            setter(trial._trial_id, key, value)
        if note is not None:
            import optuna_dashboard

            optuna_dashboard.save_note(live_trial(study, trial), note)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, model, trial._trial_id, key, value)
        if note is not None:
            _write_note(session, models, study._study_id, trial._trial_id, note)


def _write_note(session: Any, models: Any, study_id: int, trial_id: int, body: str) -> None:
    """optuna-dashboard's ``save_note`` for one trial, reading only that trial's note rows."""
    import json

    from optuna_dashboard._note import note_str_key_prefix, note_ver_key, split_body

    prefix, ver_key = note_str_key_prefix(trial_id), note_ver_key(trial_id)
    rows = {
        row.key: row
        for row in session.query(models.StudySystemAttributeModel).filter(
            models.StudySystemAttributeModel.study_id == study_id,
            models.StudySystemAttributeModel.key.like(f"dashboard:{trial_id}:%"),
        )
    }
    version = json.loads(rows[ver_key].value_json) + 1 if ver_key in rows else 1
    chunks = split_body(body, trial_id)
    stale = [k for k in rows if k.startswith(prefix) and k not in chunks]
    for key, value in {ver_key: version, **chunks, **dict.fromkeys(stale, "")}.items():
        if key in rows:
            rows[key].value_json = json.dumps(value)
        else:
            session.add(models.StudySystemAttributeModel(study_id=study_id, key=key, value_json=json.dumps(value)))


def set_trial_system_attr(study: optuna.Study, trial: Trial | FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def set_trial_system_attrs(study: optuna.Study, trial: Trial | FrozenTrial, attrs: dict[str, Any]) -> None:
    """Several system attrs of a trial in one transaction on a relational storage."""
    _set_trial_attrs(study, trial, attrs, system=True)


def fail_trial(study: optuna.Study, trial: Trial | FrozenTrial) -> bool:
    """Mark a RUNNING trial FAIL; False when another process finished it first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


def pareto_front(study: optuna.Study) -> set[int]:
    """The numbers of the trials on a multi-objective study's Pareto front (Optuna's
    ``best_trials``: the one rule every command and the API use)."""
    return {t.number for t in study.best_trials}


def paused_at(trial: FrozenTrial) -> int | None:
    """The rung a paused trial waits at (successive halving), else None."""
    return trial.system_attrs.get(PAUSED)


def pause(study: optuna.Study, trial: Trial | FrozenTrial, rung: int) -> None:
    """Leave a RUNNING trial waiting at a rung: marked paused, and its heartbeat row
    removed, so Optuna's stale-trial check (which fails RUNNING trials whose heartbeat
    is old) does not count a pause as a death."""
    from sqlalchemy import text

    set_trial_system_attr(study, trial, PAUSED, rung)
    if heartbeat_enabled(study):
        with engine_of(study).begin() as conn:
            conn.execute(text("DELETE FROM trial_heartbeats WHERE trial_id = :t"), {"t": trial._trial_id})


def unpause(study: optuna.Study, trial: Trial | FrozenTrial) -> None:
    set_trial_system_attr(study, trial, PAUSED, None)


def running_trials_without_heartbeat(
    study: optuna.Study, trials: list[FrozenTrial], older_than_s: float
) -> list[FrozenTrial]:
    """RUNNING trials with no heartbeat record, started more than ``older_than_s`` ago,
    paused ones excepted.

    Optuna's stale-trial check only looks at trials that have a heartbeat record, so a
    process killed between creating its trial and its first heartbeat is invisible to it.
    """
    from optuna.trial import TrialState
    from sqlalchemy import text

    running = [t for t in trials if t.state == TrialState.RUNNING and paused_at(t) is None]
    if not running or not heartbeat_enabled(study):
        return []
    with engine_of(study).connect() as conn:
        beating = {
            row[0]
            for row in conn.execute(
                text(
                    "SELECT t.trial_id FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                    "WHERE t.study_id = :sid AND t.state = 'RUNNING'"
                ),
                {"sid": study._study_id},
            )
        }
    now = dt.datetime.now()
    return [
        t
        for t in running
        if t._trial_id not in beating
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > older_than_s
    ]


def distribution_contains(dist: Any, value: Any) -> bool:
    """Whether an Optuna distribution holds ``value`` (external representation)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def grid_points(sampler: Any) -> list[dict[str, Any]]:
    """A GridSampler's points in grid_id order."""
    return [dict(zip(sampler._param_names, values)) for values in sampler._all_grids]


def grid_search_space(sampler: Any) -> dict[str, list[Any]]:
    """The search space a GridSampler records on its trials (system attr search_space)."""
    return sampler._search_space
