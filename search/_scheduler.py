"""The scheduling loop: decide what runs next, create its trial under the claim lock,
run it, repeat.

A study is done when every grid point is finished (COMPLETE or PRUNED), or, for the
other samplers, when ``n_trials`` trials are. A point (a grid point, or the params of a
sampled trial) is run again only when none of its trials finished and nothing else is
about to run it (a RUNNING trial with a live heartbeat, or a WAITING retry); a point
whose last trial failed with an error waits for ``run --retry-failed``. Retries come
first: they hold the checkpoints of interrupted work.

Deciding and creating the trial happen under a study-wide claim lock, so several
workers (processes, machines) never run the same point twice and never start more than
``n_trials`` trials. Nothing here knows how a trial trains: that is the runner's job
(``_trial.TrialRunner``).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from optuna_search.core import Config
from optuna_search.core._params import point_key, to_optuna_value
from optuna_search.core._text import format_seconds
from optuna_search.search._signals import raise_if_stop_requested
from optuna_search.storage._checkpoints import (
    has_checkpoint,
    point_checkpoints,
    remove_intermediate_checkpoints,
)
from optuna_search.storage._claim import ClaimLock
from optuna_search.storage._internals import (
    engine_of,
    fail_trial,
    grid_points,
    grid_search_space,
    running_trials_without_heartbeat,
    set_trial_user_attr,
)

log = logging.getLogger("optuna_search")


class Status(enum.Enum):
    PENDING = "pending"
    WAITING = "waiting"
    RUNNING = "running"
    FAILED = "failed"
    COMPLETE = "complete"
    PRUNED = "pruned"

    @property
    def finished(self) -> bool:
        return self in (Status.COMPLETE, Status.PRUNED)


@dataclass(frozen=True)
class Point:
    """One point of the search space and the trials that ran it."""

    params: dict[str, Any]
    status: Status
    trials: tuple[Any, ...] = ()

    @property
    def key(self) -> str:
        return point_key(self.params)

    @property
    def complete(self) -> list[Any]:
        return [t for t in self.trials if t.state.name == "COMPLETE"]

    @property
    def last(self) -> Any | None:
        return self.trials[-1] if self.trials else None


@dataclass(frozen=True)
class StudyState:
    points: tuple[Point, ...]
    n_target: int
    grid: bool

    @property
    def finished(self) -> int:
        """Finished grid points, or finished trials of a sampler study."""
        if self.grid:
            return sum(p.status.finished for p in self.points)
        return sum(t.state.name in ("COMPLETE", "PRUNED") for p in self.points for t in p.trials)

    @property
    def done(self) -> bool:
        return self.finished >= self.n_target and not self.of(Status.RUNNING, Status.WAITING)

    def of(self, *statuses: Status) -> list[Point]:
        return [p for p in self.points if p.status in statuses]

    def trial_seconds(self) -> float | None:
        """Mean wall time of the COMPLETE trials so far (None before the first)."""
        spans = [(t.datetime_complete - t.datetime_start).total_seconds()
                 for p in self.points for t in p.complete if t.datetime_start and t.datetime_complete]
        return sum(spans) / len(spans) if spans else None


def point_status(trials: list[Any]) -> Status:
    states = {t.state.name for t in trials}
    for state, status in (("COMPLETE", Status.COMPLETE), ("PRUNED", Status.PRUNED), ("RUNNING", Status.RUNNING),
                          ("WAITING", Status.WAITING)):
        if state in states:
            return status
    # A point whose last trial failed with an error waits for --retry-failed; one whose
    # trial was interrupted (killed, Ctrl-C, SIGTERM, time budget) is simply resumed.
    if trials and trials[-1].state.name == "FAIL" and "error" in trials[-1].user_attrs:
        return Status.FAILED
    return Status.PENDING


def trial_params(trial: Any, sampler: Any = None) -> dict[str, Any]:
    params = dict(trial.params or trial.system_attrs.get("fixed_params") or {})
    if not params and sampler is not None and "grid_id" in trial.system_attrs:
        # Created for a point by a process that died before its params were set.
        if trial.system_attrs.get("search_space") == grid_search_space(sampler):
            params = grid_points(sampler)[trial.system_attrs["grid_id"]]
    return params


def read_state(config: Config, trials: list[Any], sampler: Any = None) -> StudyState:
    """The study's points and their status, from its trials."""
    grid = config.is_grid
    keys = config.searched_keys()
    by_key: dict[str, list[Any]] = {}
    params_of: dict[str, dict[str, Any]] = {}
    if grid:
        # Grid order as configured (first key slowest), not GridSampler's shuffled order.
        for point in config.grid_points():
            p = {k: to_optuna_value(k, v) for k, v in point.items()}
            by_key[point_key(p)], params_of[point_key(p)] = [], p
    for t in trials:
        params = trial_params(t, sampler if grid else None)
        if not params or not all(k in params for k in keys):
            continue
        k = point_key({k: params[k] for k in keys})
        if grid and k not in by_key:
            continue  # a point of another grid (the grid's values may change)
        by_key.setdefault(k, []).append(t)
        params_of.setdefault(k, {k2: params[k2] for k2 in keys})
    points = tuple(Point(params_of[k], point_status(ts), tuple(ts)) for k, ts in by_key.items())
    return StudyState(points, config.n_target(), grid)


# -- decisions -------------------------------------------------------------------------
@dataclass(frozen=True)
class RunWaiting:
    point: Point


@dataclass(frozen=True)
class RunPoint:
    point: Point


@dataclass(frozen=True)
class RunNew:
    pass


@dataclass(frozen=True)
class WaitForOthers:
    running: tuple[str, ...]


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class BudgetStop:
    reason: str


Action = RunWaiting | RunPoint | RunNew | WaitForOthers | Done | BudgetStop


def decide(state: StudyState, *, retry_failed: bool, seconds_left: float | None = None,
           checkpointed: Callable[[Point], bool] = lambda p: False) -> Action:
    """What to do next (pure: the tests drive it with hand-made states)."""
    todo: Action | None = None
    waiting = state.of(Status.WAITING)
    again = state.of(Status.PENDING, *((Status.FAILED,) if retry_failed else ()))
    if waiting:
        todo = RunWaiting(waiting[0])
    elif state.grid and again:
        todo = RunPoint(again[0])
    elif not state.grid and [p for p in again if p.trials]:
        todo = RunPoint([p for p in again if p.trials][0])
    elif not state.grid and state.finished + len(state.of(Status.RUNNING)) < state.n_target:
        todo = RunNew()
    if todo is None:
        running = state.of(Status.RUNNING)
        return WaitForOthers(tuple(p.key for p in running)) if running else Done()
    if seconds_left is not None:
        estimate = state.trial_seconds()
        resumable = not isinstance(todo, RunNew) and checkpointed(todo.point)
        # A point with a checkpoint can always make progress: it stops at a checkpoint
        # before the deadline anyway.
        if seconds_left <= 0 or (estimate is not None and estimate > seconds_left and not resumable):
            return BudgetStop(f"{format_seconds(seconds_left)} left, a trial takes about {format_seconds(estimate)}")
    return todo


# -- the loop --------------------------------------------------------------------------
class Runner(Protocol):
    """What runs a trial the scheduler created (``_trial.TrialRunner``; tests use fakes)."""

    budget_stopped: bool
    """True once a trial stopped at a checkpoint for the session's deadline."""

    def run(self, trial: Any, *, position: tuple[int, int], attempts: int) -> None:
        """Train and evaluate ``trial``, then tell Optuna its outcome."""


@dataclass
class RunOutcome:
    study: Any
    state: StudyState
    ran: int
    budget_reached: bool = False


class Scheduler:
    """Runs a study's remaining work through ``runner`` (see ``_trial.TrialRunner``)."""

    def __init__(self, study: Any, config: Config, runner: Runner, dists: dict[str, Any]) -> None:
        self.study, self.config, self.runner, self.dists = study, config, runner, dists
        self.sampler = study.sampler if config.is_grid else None
        self._pruned_checkpoints: set[str] = set()

    def state(self, trials: list[Any] | None = None) -> StudyState:
        return read_state(self.config, trials if trials is not None else self.study.get_trials(deepcopy=False), self.sampler)

    def run(self, *, retry_failed: bool = False, deadline: float | None = None, wait_for_others: bool = True,
            after_trial: Callable[[Any, StudyState], None] | None = None) -> RunOutcome:
        ran = 0
        lock = ClaimLock(engine_of(self.study), self.study.study_name)
        while True:
            raise_if_stop_requested()  # SIGTERM between trials: start nothing new
            with lock:
                state = self._reconciled_state()
                left = None if deadline is None else deadline - time.monotonic()
                action = BudgetStop("the running trial stopped at a checkpoint") if self.runner.budget_stopped else decide(
                    state, retry_failed=retry_failed, seconds_left=left, checkpointed=self._checkpointed)
                trial = self._create_trial(action, state) if isinstance(action, (RunWaiting, RunPoint, RunNew)) else None
            if isinstance(action, BudgetStop):
                log.info("time budget: %s; stopping", action.reason)
                return RunOutcome(self.study, self.state(), ran, budget_reached=True)
            if isinstance(action, Done):
                return RunOutcome(self.study, state, ran)
            if isinstance(action, WaitForOthers):
                if wait_for_others and self._wait_for(action.running):
                    continue
                return RunOutcome(self.study, state, ran)
            if trial is None:
                continue  # a sampled duplicate, settled without training
            self.runner.run(trial, position=(state.finished + 1, state.n_target), attempts=self._attempts(action))
            ran += 1
            if after_trial is not None:
                after_trial(self.study, self.state())

    def _reconciled_state(self) -> StudyState:
        trials = self.study.get_trials(deepcopy=False)
        if fail_orphaned_trials(self.study, self.config.storage.grace_period, trials):
            trials = self.study.get_trials(deepcopy=False)
        state = self.state(trials)
        for p in state.points:
            # Once a point is finished (in the database, not before) its intermediate
            # checkpoints are dead weight; its final adapter stays.
            if p.status.finished and p.key not in self._pruned_checkpoints:
                remove_intermediate_checkpoints(self._folder(p))
                self._pruned_checkpoints.add(p.key)
        return state

    def _folder(self, p: Point):
        return point_checkpoints(self.config.train.output_dir, self.config.study.name, p.params)

    def _checkpointed(self, p: Point) -> bool:
        return has_checkpoint(self._folder(p))

    @staticmethod
    def _attempts(action: Action) -> int:
        if isinstance(action, RunNew):
            return 1
        return len(action.point.trials) + (0 if isinstance(action, RunWaiting) else 1)

    def _create_trial(self, action: Action, state: StudyState) -> Any | None:
        """The trial for ``action``, created under the claim lock (so every other worker
        sees it RUNNING at once). None when a sampler proposed a point that already ran."""
        if isinstance(action, RunWaiting):
            return self.study.ask(self.dists)  # pops the oldest WAITING retry, same params
        if isinstance(action, RunPoint) and self.sampler is not None:
            return self.sampler.ask_point(self.study, action.point.params, self.dists)
        if isinstance(action, RunPoint):
            self.study.enqueue_trial(action.point.params, skip_if_exists=False)
            return self.study.ask(self.dists)
        trial = self.study.ask(self.dists)
        return self._settle_duplicate(trial, state)

    def _settle_duplicate(self, trial: Any, state: StudyState) -> Any | None:
        """A sampler may propose params that already ran (categorical spaces): the result
        would be the same, so the trial copies it instead of training again."""
        key = point_key(dict(trial.params))
        same = next((p for p in state.points if p.key == key and p.status in (Status.COMPLETE, Status.PRUNED, Status.RUNNING)), None)
        if same is None:
            return trial
        from optuna.trial import TrialState

        original = (same.complete or list(same.trials))[0]
        trial.set_user_attr("duplicate_of", original.number)
        if same.status == Status.COMPLETE:
            self.study.tell(trial, original.values)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d proposed %s again (trial %d): recorded as its duplicate, not trained", trial.number, key, original.number)
        return None

    def _wait_for(self, running: tuple[str, ...]) -> bool:
        """Other processes hold the remaining points: wait until they finish, or until
        their heartbeat goes stale and the point comes back to us. True when there is news."""
        from optuna.storages import fail_stale_trials

        log.info("waiting for %s, RUNNING in another process (a dead one is detected after %ds)",
                 ", ".join(running), self.config.storage.grace_period)
        while True:
            time.sleep(min(5, self.config.storage.heartbeat_interval))
            fail_stale_trials(self.study)
            fail_orphaned_trials(self.study, self.config.storage.grace_period)
            if tuple(p.key for p in self.state().of(Status.RUNNING)) != running:
                return True


def fail_orphaned_trials(study: Any, grace_period: float, trials: list[Any] | None = None) -> int:
    """Fail RUNNING trials that never got a heartbeat, older than the grace period: a
    process killed between creating its trial and starting its heartbeat leaves one that
    Optuna's stale check never sees. Returns how many were failed."""
    failed = 0
    for t in running_trials_without_heartbeat(study, trials if trials is not None else study.get_trials(deepcopy=False), grace_period):
        set_trial_user_attr(study, t, "orphaned", "its process died before its heartbeat started")
        failed += fail_trial(study, t)
    return failed
