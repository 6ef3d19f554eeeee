"""Every use of Optuna's private API, in one place.

optuna-search needs a few things Optuna does not expose publicly: the SQLAlchemy engine
behind an ``RDBStorage`` (claim locks, the heartbeat table), trial and study ids for
storage calls, the heartbeat thread that ``Study.optimize`` starts (we run trials with
ask/tell so that the claim lock can cover trial creation), and GridSampler's enumeration
of its grid. ``tests/test_internals.py`` pins each of these on the installed Optuna, so
an Optuna upgrade that changes one fails that test, not the product.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any, Iterator


def storage_of(study: Any) -> Any:
    """The storage a study reads and writes through (possibly a caching wrapper)."""
    return study._storage


def rdb_backend(storage: Any) -> Any:
    """The ``RDBStorage`` behind Optuna's caching wrapper (or the storage itself)."""
    return getattr(storage, "_backend", storage)


def engine_of(study_or_storage: Any) -> Any:
    storage = getattr(study_or_storage, "_storage", study_or_storage)
    return rdb_backend(storage).engine


def study_id(study: Any) -> int:
    return study._study_id


def trial_id(trial: Any) -> int:
    return trial._trial_id


def stored_trial(study: Any, trial: Any) -> Any:
    """The trial as stored now: a live ``optuna.Trial`` caches its user attrs from when it
    was asked, so attrs written since (through the storage) are missing from it."""
    return study._storage.get_trial(trial._trial_id)


def heartbeat_enabled(study: Any) -> bool:
    return getattr(rdb_backend(study._storage), "heartbeat_interval", None) is not None


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while the block runs, as ``Study.optimize`` does."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def set_trial_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attr on any trial of the study, finished ones included."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def set_trial_system_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def fail_trial(study: Any, trial: Any) -> bool:
    """Mark a RUNNING trial FAIL; False when another process finished it first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


def running_trials_without_heartbeat(study: Any, trials: list[Any], older_than_s: float) -> list[Any]:
    """RUNNING trials with no heartbeat record, started more than ``older_than_s`` ago.

    Optuna's stale-trial check only looks at trials that have a heartbeat record, so a
    process killed between creating its trial and its first heartbeat is invisible to it.
    """
    from optuna.trial import TrialState
    from sqlalchemy import text

    running = [t for t in trials if t.state == TrialState.RUNNING]
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
        t for t in running
        if t._trial_id not in beating and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > older_than_s
    ]


def grid_points(sampler: Any) -> list[dict[str, Any]]:
    """A GridSampler's points in grid_id order."""
    return [dict(zip(sampler._param_names, values)) for values in sampler._all_grids]


def grid_search_space(sampler: Any) -> dict[str, list[Any]]:
    """The search space a GridSampler records on its trials (system attr search_space)."""
    return sampler._search_space
