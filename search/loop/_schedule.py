"""What a study is made of, and what to do next: the points and their status (read from
the trials), the actions a schedule chooses between, and the schedule of a grid or a
sampler study. Successive halving (``_halving``) is the other schedule; both implement
:class:`Schedule` (a study's state in, the next action out, pure) and speak the same
actions.

A study is done when every point it needs is finished (COMPLETE or PRUNED): every grid
point, or ``n_trials`` sampled points (clipped to the size of a finite space). A point
(a grid point, or the params of a sampled trial) is run again only when none of its
trials finished and nothing else is about to run it (a RUNNING trial with a live
heartbeat, or a WAITING retry); a point whose last trial failed with an error waits for
``run --retry-failed``. Retries come first: they hold the checkpoints of interrupted work.

Optuna's trial states are read here only (:func:`point_status`, :class:`Point`), into
the one vocabulary the schedules, the scheduler and the summaries speak: :class:`Status`.

"Paused" has one representation: a RUNNING trial marked with the rung it waits at
(``storage.study._internals.paused_at``); :class:`Status` reads it, nothing else says it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from optuna_search.core import (
    Config,
    Status,
    StudyMeta,
    TrialRecord,
    format_seconds,
    point_key,
    short_point_key,
    to_optuna_value,
)
from optuna_search.search.setup import n_target
from optuna_search.storage import paused_at

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class Point:
    """One point of the search space and the trials that ran it."""

    params: dict[str, Any]
    status: Status
    trials: tuple[FrozenTrial, ...] = ()

    @property
    def key(self) -> str:
        return point_key(self.params)

    @property
    def label(self) -> str:
        return short_point_key(self.params)

    @property
    def complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state.name == "COMPLETE"]

    @property
    def waiting_trial(self) -> FrozenTrial | None:
        """Its retry that waits to be claimed (WAITING), if any."""
        return next((t for t in self.trials if t.state.name == "WAITING"), None)

    @property
    def last(self) -> FrozenTrial | None:
        return self.trials[-1] if self.trials else None

    @property
    def paused_trial(self) -> FrozenTrial | None:
        return next((t for t in reversed(self.trials) if t.state.name == "RUNNING" and paused_at(t) is not None), None)

    @property
    def order(self) -> int:
        return self.trials[0].number if self.trials else -1

    def records(self, fields: list[str]) -> list[TrialRecord]:
        return [TrialRecord.from_trial(t, fields) for t in self.trials]

    def rung(self, fields: list[str]) -> int:
        """The last successive-halving rung any of its trials reached (-1: none)."""
        return max((r.rung for r in self.records(fields) if r.rung is not None), default=-1)


@dataclass(frozen=True)
class StudyState:
    points: tuple[Point, ...]
    n_target: int
    grid: bool
    halving_promoted: dict[int, list[str]] = field(default_factory=dict)
    halving_open: frozenset[int] = frozenset()
    """Adaptive successive halving: the rungs whose promotions are not final yet."""

    @property
    def finished(self) -> int:
        """Finished points (grid points or sampled configurations)."""
        return sum(p.status.finished for p in self.points)

    @property
    def attempted(self) -> int:
        """Finished points plus those that failed with an error (a sampler study spends
        its n_trials on both: a failing configuration is not sampled forever)."""
        return sum(p.status.finished or p.status == Status.FAILED for p in self.points)

    @property
    def pruned(self) -> int:
        return sum(p.status == Status.PRUNED for p in self.points)

    @property
    def done(self) -> bool:
        return self.attempted >= self.n_target and not self.of(Status.RUNNING, Status.WAITING, Status.PAUSED)

    def of(self, *statuses: Status) -> list[Point]:
        return [p for p in self.points if p.status in statuses]

    def by_key(self) -> dict[str, Point]:
        return {p.key: p for p in self.points}

    def trial_seconds(self) -> float | None:
        """Mean wall time of the COMPLETE trials so far (None before the first)."""
        spans = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for p in self.points
            for t in p.complete
            if t.datetime_start and t.datetime_complete
        ]
        return sum(spans) / len(spans) if spans else None


def point_status(trials: list[FrozenTrial]) -> Status:
    states = [Status.of_trial(t.state.name, paused=paused_at(t) is not None) for t in trials]
    for status in (Status.COMPLETE, Status.PRUNED, Status.RUNNING, Status.WAITING, Status.PAUSED):
        if status in states:
            return status
    # A point whose last trial failed with an error waits for --retry-failed; one whose
    # trial was interrupted (killed, Ctrl-C, SIGTERM, time budget) is simply resumed.
    if states and states[-1] == Status.FAILED and trials[-1].user_attrs.get("error"):
        return Status.FAILED
    return Status.PENDING


def trial_params(trial: FrozenTrial, sampler: Any = None) -> dict[str, Any]:
    params = dict(trial.params or trial.system_attrs.get("fixed_params") or {})
    if not params and sampler is not None:
        # Created for a grid point by a process that died before its params were set.
        params = sampler.point_of(trial) or {}
    return params


def read_state(
    config: Config, trials: list[FrozenTrial], sampler: Any = None, meta: StudyMeta | None = None
) -> StudyState:
    """The study's points and their status, from its trials (``sampler``: the grid's)."""
    grid = config.is_grid
    keys = config.searched_keys()
    by_key: dict[str, list[Any]] = {}
    params_of: dict[str, dict[str, Any]] = {}
    if grid:
        # Grid order as configured (first key slowest), not GridSampler's shuffled order.
        for point in config.grid_points():
            p = {k: to_optuna_value(k, v) for k, v in point.items()}
            by_key[point_key(p)], params_of[point_key(p)] = [], p
    for t in sorted(trials, key=lambda t: t.number):
        params = trial_params(t, sampler if grid else None)
        if not params or not all(k in params for k in keys):
            continue
        k = point_key({k: params[k] for k in keys})
        if grid and k not in by_key:
            continue  # a point of another grid (the grid's values may change)
        by_key.setdefault(k, []).append(t)
        params_of.setdefault(k, {k2: params[k2] for k2 in keys})
    points = tuple(Point(params_of[k], point_status(ts), tuple(ts)) for k, ts in by_key.items())
    halving = (meta.halving if meta else None) or {}
    promoted = {int(r): list(v) for r, v in halving.get("promoted", {}).items()}
    return StudyState(points, n_target(config), grid, promoted, frozenset(int(r) for r in halving.get("open", [])))


# -- actions: what a schedule decides --------------------------------------------------------
@dataclass(frozen=True)
class Train:
    """Train the point ``key`` (to ``rung`` under successive halving): its WAITING retry,
    its paused trial, or a new trial at its params."""

    key: str
    rung: int | None = None


@dataclass(frozen=True)
class New:
    """A new configuration, where the study's sampler proposes (to ``rung``)."""

    rung: int | None = None


@dataclass(frozen=True)
class Promote:
    """Successive halving: these configurations go on from ``rung``. A fixed cut decides
    once (``final``); the adaptive one promotes in steps, each stored with the evidence
    that decided it (``evidence``), and is final when it cuts or trains the rest to the end."""

    rung: int
    keys: tuple[str, ...]
    final: bool = True
    evidence: dict[str, Any] | None = None


@dataclass(frozen=True)
class PruneRest:
    """Successive halving: paused configurations not promoted at a decided rung end PRUNED
    (one that failed stays FAIL, named by `run`'s exit code)."""

    rung: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """What is left runs in other processes."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class BudgetStop:
    reason: str


Action = Train | New | Promote | PruneRest | Wait | Done | BudgetStop
TRAINING = (Train, New)


class Schedule(Protocol):
    """A study's schedule: given where it stands, the next action (pure)."""

    def next(self, state: StudyState, retry_failed: bool) -> Action: ...


class TrialSchedule:
    """Grid and sampler studies: every configuration trains to its end in one go."""

    def next(self, state: StudyState, retry_failed: bool) -> Action:
        waiting = state.of(Status.WAITING)
        again = state.of(Status.PENDING, *((Status.FAILED,) if retry_failed else ()))
        if waiting:
            return Train(waiting[0].key)
        if state.grid and again:
            return Train(again[0].key)
        started = [p for p in again if p.trials]
        if not state.grid and started:
            return Train(started[0].key)
        running = state.of(Status.RUNNING)
        if not state.grid and state.attempted + len(running) < state.n_target:
            return New()
        return Wait(tuple(p.key for p in running)) if running else Done()


def decide(
    schedule: Schedule,
    state: StudyState,
    *,
    retry_failed: bool,
    seconds_left: float | None = None,
    checkpointed: Callable[[Point], bool] = lambda p: False,
) -> Action:
    """The schedule's next action, unless the session's time budget says to stop first:
    a trial that the estimate from earlier trials says cannot finish is not started (a
    point with a checkpoint can always make progress: it stops at a checkpoint in time)."""
    todo = schedule.next(state, retry_failed)
    if not isinstance(todo, TRAINING) or seconds_left is None:
        return todo
    estimate = state.trial_seconds()
    point = state.by_key().get(todo.key) if isinstance(todo, Train) else None
    resumable = point is not None and (checkpointed(point) or point.status == Status.PAUSED)
    if seconds_left <= 0 or (estimate is not None and estimate > seconds_left and not resumable):
        why = (
            f"a trial takes about {format_seconds(estimate)}"
            if estimate is not None
            else "no trial has finished yet to say how long one takes"
        )
        return BudgetStop(f"{format_seconds(seconds_left)} of the time budget left, {why}: not starting another")
    return todo
