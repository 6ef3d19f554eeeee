"""The scheduling loop: decide what runs next, create (or resume) its trial under the
claim lock, run it, tell Optuna its outcome. The only place that tells Optuna anything.

A study is done when every point it needs is finished (COMPLETE or PRUNED): every grid
point, or ``n_trials`` sampled points (clipped to the size of a finite space). A point
(a grid point, or the params of a sampled trial) is run again only when none of its
trials finished and nothing else is about to run it (a RUNNING trial with a live
heartbeat, or a WAITING retry); a point whose last trial failed with an error waits for
``run --retry-failed``. Retries come first: they hold the checkpoints of interrupted work.
With ``study.schedule = "successive_halving"`` the order is ``_halving``'s: every
configuration to the first rung, promotions, the survivors to the next rung; a
configuration between rungs is a RUNNING trial marked paused (no heartbeat to go stale).

Deciding and creating the trial happen under a study-wide claim lock, so several
workers (processes, machines) never run the same point twice, never start more than
``n_trials`` and decide each promotion once. Nothing here knows how a trial trains: that
is the runner's job (``_trial.TrialRunner``), which returns a :class:`TrialOutcome`.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from optuna_search.core import Config, StudyMeta, TrialRecord
from optuna_search.core._params import point_key, short_point_key, to_optuna_value
from optuna_search.core._text import format_seconds
from optuna_search.search import _halving as halving
from optuna_search.search._signals import raise_if_stop_requested
from optuna_search.search._space import distributions, make_sampler, n_target
from optuna_search.storage._checkpoints import (
    has_checkpoint,
    point_checkpoints,
    release,
    remove_intermediate_checkpoints,
)
from optuna_search.storage._claim import ClaimLock
from optuna_search.storage._internals import (
    claim_waiting,
    engine_of,
    fail_trial,
    live_trial,
    pause,
    paused_at,
    running_trials_without_heartbeat,
    unpause,
)
from optuna_search.storage._records import read_meta, write_meta, write_record

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("optuna_search")


class Status(enum.Enum):
    PENDING = "pending"
    WAITING = "waiting"
    RUNNING = "running"
    PAUSED = "paused"
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
    trials: tuple["FrozenTrial", ...] = ()

    @property
    def key(self) -> str:
        return point_key(self.params)

    @property
    def label(self) -> str:
        return short_point_key(self.params)

    @property
    def complete(self) -> list["FrozenTrial"]:
        return [t for t in self.trials if t.state.name == "COMPLETE"]

    @property
    def last(self) -> "FrozenTrial | None":
        return self.trials[-1] if self.trials else None

    @property
    def paused_trial(self) -> "FrozenTrial | None":
        return next((t for t in reversed(self.trials) if t.state.name == "RUNNING" and paused_at(t) is not None), None)

    @property
    def order(self) -> int:
        return self.trials[0].number if self.trials else -1

    def rung(self, fields: list[str]) -> int:
        """The last successive-halving rung any of its trials reached (-1: none)."""
        reached = [TrialRecord.from_trial(t, fields).rung for t in self.trials]
        return max((r for r in reached if r is not None), default=-1)


@dataclass(frozen=True)
class StudyState:
    points: tuple[Point, ...]
    n_target: int
    grid: bool
    halving_promoted: dict[int, list[str]] = field(default_factory=dict)

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

    def trial_seconds(self) -> float | None:
        """Mean wall time of the COMPLETE trials so far (None before the first)."""
        spans = [(t.datetime_complete - t.datetime_start).total_seconds()
                 for p in self.points for t in p.complete if t.datetime_start and t.datetime_complete]
        return sum(spans) / len(spans) if spans else None


def point_status(trials: list["FrozenTrial"]) -> Status:
    states = {t.state.name for t in trials}
    for state, status in (("COMPLETE", Status.COMPLETE), ("PRUNED", Status.PRUNED)):
        if state in states:
            return status
    if any(t.state.name == "RUNNING" and paused_at(t) is None for t in trials):
        return Status.RUNNING
    if "WAITING" in states:
        return Status.WAITING
    if "RUNNING" in states:
        return Status.PAUSED
    # A point whose last trial failed with an error waits for --retry-failed; one whose
    # trial was interrupted (killed, Ctrl-C, SIGTERM, time budget) is simply resumed.
    if trials and trials[-1].state.name == "FAIL" and "error" in trials[-1].user_attrs:
        return Status.FAILED
    return Status.PENDING


def trial_params(trial: "FrozenTrial", sampler: Any = None) -> dict[str, Any]:
    params = dict(trial.params or trial.system_attrs.get("fixed_params") or {})
    if not params and sampler is not None:
        # Created for a grid point by a process that died before its params were set.
        params = sampler.point_of(trial) or {}
    return params


def read_state(config: Config, trials: list["FrozenTrial"], sampler: Any = None, meta: StudyMeta | None = None) -> StudyState:
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
    promoted = {int(r): list(v) for r, v in ((meta.halving or {}).get("promoted", {}) if meta else {}).items()}
    return StudyState(points, n_target(config), grid, promoted)


def study_state(study: "optuna.Study", config: Config) -> StudyState:
    """Where a study stands: its points, their status, its target, its promotions."""
    sampler = study.sampler if config.is_grid and hasattr(study.sampler, "point_of") else (
        make_sampler(config) if config.is_grid else None)
    return read_state(config, study.get_trials(deepcopy=False), sampler, read_meta(study))


# -- decisions -------------------------------------------------------------------------
@dataclass(frozen=True)
class RunWaiting:
    point: Point
    rung: int | None = None


@dataclass(frozen=True)
class RunPoint:
    point: Point
    rung: int | None = None


@dataclass(frozen=True)
class ResumePaused:
    point: Point
    rung: int


@dataclass(frozen=True)
class RunNew:
    rung: int | None = None


# Successive halving's decisions at a rung, as _halving makes them.
Promote = halving.Promote
PruneRest = halving.PruneRest


@dataclass(frozen=True)
class WaitForOthers:
    running: tuple[str, ...]


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class BudgetStop:
    reason: str


Action = RunWaiting | RunPoint | ResumePaused | RunNew | Promote | PruneRest | WaitForOthers | Done | BudgetStop
TRAINING = (RunWaiting, RunPoint, ResumePaused, RunNew)


def decide(state: StudyState, *, retry_failed: bool, seconds_left: float | None = None,
           checkpointed: Callable[[Point], bool] = lambda p: False, rungs: int = 0, eta: int = 3,
           fields: list[str] | None = None) -> Action:
    """What to do next (pure: the tests drive it with hand-made states). ``rungs``: the
    number of successive-halving rungs (0: every trial trains to its end)."""
    todo = _halving_step(state, retry_failed, rungs, eta, fields or []) if rungs else _trial_step(state, retry_failed)
    if not isinstance(todo, TRAINING) or seconds_left is None:
        return todo
    estimate = state.trial_seconds()
    resumable = not isinstance(todo, RunNew) and (checkpointed(todo.point) or isinstance(todo, ResumePaused))
    # A point with a checkpoint can always make progress: it stops at a checkpoint
    # before the deadline anyway.
    if seconds_left <= 0 or (estimate is not None and estimate > seconds_left and not resumable):
        return BudgetStop(f"{format_seconds(seconds_left)} left, a trial takes about {format_seconds(estimate)}: "
                          "not starting another")
    return todo


def _trial_step(state: StudyState, retry_failed: bool) -> Action:
    waiting = state.of(Status.WAITING)
    again = state.of(Status.PENDING, *((Status.FAILED,) if retry_failed else ()))
    if waiting:
        return RunWaiting(waiting[0])
    if state.grid and again:
        return RunPoint(again[0])
    if not state.grid and [p for p in again if p.trials]:
        return RunPoint([p for p in again if p.trials][0])
    running = state.of(Status.RUNNING)
    if not state.grid and state.attempted + len(running) < state.n_target:
        return RunNew()
    return WaitForOthers(tuple(p.label for p in running)) if running else Done()


_HALVING_STATE = {Status.PENDING: "pending", Status.WAITING: "waiting", Status.RUNNING: "running", Status.PAUSED: "paused",
                  Status.FAILED: "failed", Status.COMPLETE: "complete", Status.PRUNED: "pruned"}


def _halving_step(state: StudyState, retry_failed: bool, rungs: int, eta: int, fields: list[str]) -> Action:
    by_key = {p.key: p for p in state.points}
    configs = []
    for i, p in enumerate(state.points):
        reached = rungs - 1 if p.status == Status.COMPLETE else p.rung(fields)
        configs.append(halving.Config(p.key, _HALVING_STATE[p.status], reached, rung_metrics(p, fields),
                                      i if state.grid else (p.order if p.trials else 10**9 + i)))
    a = halving.next_action(configs, state.halving_promoted, n_configs=state.n_target, n_rungs=rungs, eta=eta,
                            retry_failed=retry_failed)
    if isinstance(a, halving.NewConfig):
        return RunNew(0)
    if isinstance(a, halving.TrainTo):
        p = by_key[a.key]
        if p.status == Status.WAITING:
            return RunWaiting(p, a.rung)
        if p.status == Status.PAUSED:
            return ResumePaused(p, a.rung)
        return RunPoint(p, a.rung)
    if isinstance(a, (halving.Promote, halving.PruneRest)):
        return a
    if isinstance(a, halving.Wait):
        return WaitForOthers(tuple(by_key[k].label for k in a.keys))
    return Done()


def rung_metrics(p: Point, fields: list[str]) -> dict[int, float]:
    """A configuration's metric at each rung it reached (the intermediate value reported
    at that rung's validation point; the study's prune_on signal)."""
    out: dict[int, float] = {}
    for t in p.trials:
        r = TrialRecord.from_trial(t, fields)
        for rung, value in (r.rung_values or {}).items():
            out[int(rung)] = value
    return out


# -- outcomes --------------------------------------------------------------------------
class Outcome(enum.Enum):
    COMPLETE = "complete"
    PRUNED = "pruned"
    PAUSED = "paused"
    """Stopped at a rung's checkpoint (successive halving); the same trial resumes."""
    FAILED = "failed"
    """An error of this configuration, recorded; it waits for --retry-failed."""
    BUDGET = "budget"
    """Stopped at a checkpoint for the session's deadline; resumable."""
    INTERRUPTED = "interrupted"
    """Ctrl-C, SIGTERM, bad input, a full disk: not the configuration's fault; resumable."""


@dataclass
class TrialOutcome:
    kind: Outcome
    record: TrialRecord
    """Written on the trial before Optuna is told."""
    values: list[float] | None = None
    """The objective values of a COMPLETE trial."""
    stop: BaseException | None = None
    """Raised once the trial is told (the run stops: Ctrl-C, SIGTERM, a full disk)."""


class Runner(Protocol):
    """What runs a trial the scheduler created (``_trial.TrialRunner``; tests use fakes)."""

    def run(self, trial: "optuna.Trial", *, position: tuple[int, int], attempts: int, rung: int | None) -> TrialOutcome:
        """Train and evaluate ``trial`` (to ``rung`` under successive halving); say how it ended."""


@dataclass
class RunOutcome:
    study: "optuna.Study"
    state: StudyState
    ran: int
    budget_reached: bool = False


class Scheduler:
    """Runs a study's remaining work through ``runner``."""

    def __init__(self, study: "optuna.Study", config: Config, runner: Runner) -> None:
        self.study, self.config, self.runner = study, config, runner
        self.dists = distributions(config)
        self.sampler = study.sampler if config.is_grid else None
        self.fields = list(config.data.fields)
        self.rungs = list(config.study.rungs) if config.halving else []
        self._released: set[str] = set()

    def state(self) -> StudyState:
        return read_state(self.config, self.study.get_trials(deepcopy=False), self.sampler, read_meta(self.study))

    def run(self, *, retry_failed: bool = False, deadline: float | None = None, wait_for_others: bool = True,
            after_trial: Callable[[Any, StudyState], None] | None = None) -> RunOutcome:
        ran, budget_stopped = 0, False
        lock = ClaimLock(engine_of(self.study), self.study.study_name)
        while True:
            raise_if_stop_requested()  # SIGTERM between trials: start nothing new
            with lock:
                state = self._reconciled_state()
                left = None if deadline is None else deadline - time.monotonic()
                action = BudgetStop("the running trial stopped at a checkpoint") if budget_stopped else decide(
                    state, retry_failed=retry_failed, seconds_left=left, checkpointed=self._checkpointed,
                    rungs=len(self.rungs), eta=self.config.study.eta, fields=self.fields)
                if isinstance(action, (Promote, PruneRest)):
                    self._settle_rung(action, state)
                    continue
                trial = self._start(action) if isinstance(action, TRAINING) else None
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
                continue  # the retry went to another process: decide again
            rung = getattr(action, "rung", None)
            outcome = self.runner.run(trial, position=(state.finished + 1, state.n_target), attempts=self._attempts(action),
                                      rung=rung)
            self._finish(trial, outcome, rung)
            budget_stopped = outcome.kind == Outcome.BUDGET
            ran += 1
            if after_trial is not None:
                after_trial(self.study, self.state())

    # -- Optuna is told here, and only here ------------------------------------------------
    def _tell(self, trial: "optuna.Trial", state: str, values: list[float] | None = None) -> None:
        from optuna.trial import TrialState

        if state == "COMPLETE":
            self.study.tell(trial, values if len(values or []) > 1 else (values or [None])[0])
        else:
            self.study.tell(trial, state=TrialState[state])

    def _finish(self, trial: "optuna.Trial", outcome: TrialOutcome, rung: int | None) -> None:
        """Record the outcome, then tell Optuna (or pause the trial); raise what stops the run."""
        try:
            write_record(self.study, trial, outcome.record)
            kind = outcome.kind
            if kind == Outcome.COMPLETE:
                self._tell(trial, "COMPLETE", outcome.values)
            elif kind == Outcome.PRUNED:
                self._tell(trial, "PRUNED")
            elif kind == Outcome.PAUSED or (self.rungs and kind in (Outcome.BUDGET, Outcome.INTERRUPTED)):
                # Successive halving keeps one trial per configuration: it waits, paused, at
                # the last rung it reached, and the same trial resumes from its checkpoint.
                pause(self.study, trial, outcome.record.rung if outcome.record.rung is not None else -1)
            else:
                self._tell(trial, "FAIL")
        except Exception:  # noqa: BLE001 - the database itself may be what failed (a full disk)
            if outcome.stop is None:
                raise
            log.debug("could not record trial %d", trial.number)
        if outcome.stop is not None:
            raise outcome.stop

    def _settle_rung(self, action: Promote | PruneRest, state: StudyState) -> None:
        """Store a rung's promotions (once), or end the configurations left behind."""
        if isinstance(action, Promote):
            meta = read_meta(self.study)
            halving_attr = dict(meta.halving or {})
            halving_attr["promoted"] = {**halving_attr.get("promoted", {}), str(action.rung): list(action.keys)}
            write_meta(self.study, StudyMeta(halving=halving_attr))
            names = {p.key: p.label for p in state.points}
            log.info("rung %d (%.0f%% of training) decided: %s go on", action.rung + 1, 100 * self.rungs[action.rung],
                     ", ".join(names[k] for k in action.keys))
            return
        by_key = {p.key: p for p in state.points}
        for p in (by_key[k] for k in action.keys):
            t = p.paused_trial
            if t is None:
                continue
            self._tell(live_trial(self.study, t), "PRUNED")
            log.info("%s pruned at rung %d (not among the best 1/%d)", p.label, action.rung + 1, self.config.study.eta)

    def _reconciled_state(self) -> StudyState:
        trials = self.study.get_trials(deepcopy=False)
        if fail_orphaned_trials(self.study, self.config.storage.grace_period, trials):
            trials = self.study.get_trials(deepcopy=False)
        state = read_state(self.config, trials, self.sampler, read_meta(self.study))
        for p in state.points:
            # Once a point is finished (in the database, not before) its intermediate
            # checkpoints are dead weight; its final adapter stays. A pruned point is
            # never resumed: its checkpoints go.
            if p.status.finished and p.key not in self._released:
                folder = self._folder(p)
                release(folder) if p.status == Status.PRUNED else remove_intermediate_checkpoints(folder)
                self._released.add(p.key)
        return state

    def _folder(self, p: Point):
        return point_checkpoints(self.config.train.output_dir, self.config.study.name, p.params)

    def _checkpointed(self, p: Point) -> bool:
        return has_checkpoint(self._folder(p))

    @staticmethod
    def _attempts(action: Action) -> int:
        if isinstance(action, RunNew):
            return 1
        if isinstance(action, ResumePaused):
            return len(action.point.trials)
        return len(action.point.trials) + (0 if isinstance(action, RunWaiting) else 1)

    def _start(self, action: Action) -> Any:
        """The trial for ``action``, created (or resumed) under the claim lock, so every
        other worker sees it RUNNING at once."""
        if isinstance(action, ResumePaused):
            t = action.point.paused_trial
            unpause(self.study, t)
            return live_trial(self.study, t)
        if isinstance(action, RunWaiting):
            # This point's own retry (Optuna's ask would pop the oldest WAITING trial,
            # whichever point it holds), with the params of the trial it retries.
            waiting = next(t for t in action.point.trials if t.state.name == "WAITING")
            return claim_waiting(self.study, waiting)  # None: another process took it first
        if isinstance(action, RunPoint) and self.sampler is not None:
            return self.sampler.ask_point(self.study, action.point.params, self.dists)
        if isinstance(action, RunPoint):
            self.study.enqueue_trial(action.point.params, skip_if_exists=False)
        return self.study.ask(self.dists)

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
            if tuple(p.label for p in self.state().of(Status.RUNNING)) != running:
                return True


def fail_orphaned_trials(study: "optuna.Study", grace_period: float, trials: list["FrozenTrial"] | None = None) -> int:
    """Fail RUNNING trials that never got a heartbeat, older than the grace period: a
    process killed between creating its trial and starting its heartbeat leaves one that
    Optuna's stale check never sees. Returns how many were failed."""
    failed = 0
    for t in running_trials_without_heartbeat(study, trials if trials is not None else study.get_trials(deepcopy=False), grace_period):
        write_record(study, t, TrialRecord(orphaned="its process died before its heartbeat started"))
        failed += fail_trial(study, t)
    return failed


def rung_fraction(rungs: list[float], rung: int | None) -> float:
    return 1.0 if rung is None else rungs[rung]


__all__ = ["Scheduler", "StudyState", "Status", "decide", "read_state", "study_state"]
