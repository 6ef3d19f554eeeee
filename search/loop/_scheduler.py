"""The study loop: under the claim lock, read where the study stands, let its schedule
decide (``_schedule``: grid or sampler; ``_halving``: successive halving), start that
trial through the ledger; then, outside the lock, hand it to the runner with its
heartbeat on, and record how it ended through the ledger, in one call.

    while not done:
        with claim lock:  state = reconcile + read;  action = decide(schedule, state)
        trial = ledger.new / claim_waiting / resume_paused;  ledger.start(trial, record)
        with ledger.heartbeat(trial):  outcome = runner.run(job)
        ledger.complete / prune / pause / fail / interrupt (trial, outcome)

Deciding and creating the trial happen under a study-wide claim lock, so several
workers (processes, machines) never run the same point twice, never start more than
``n_trials`` and decide each promotion once. The runner knows nothing of the storage:
a :class:`Job` in, a :class:`TrialOutcome` out; its validation points reach the pruner
through the job's :class:`Reporter`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from optuna_search.core import Config, TrialRecord, point_key
from optuna_search.dashboards import evidence_line, rung_decisions, rung_line, trial_note
from optuna_search.search.loop._halving import Adaptive, SuccessiveHalving, tied_at_the_cut
from optuna_search.search.loop._schedule import (
    Action,
    BudgetStop,
    Done,
    New,
    Point,
    Promote,
    PruneRest,
    Schedule,
    Status,
    StudyState,
    Train,
    TrialSchedule,
    Wait,
    decide,
    read_state,
)
from optuna_search.search.loop._signals import raise_if_stop_requested
from optuna_search.search.setup import fitted_distributions, make_sampler
from optuna_search.storage import (
    ClaimLock,
    Ledger,
    PointSampler,
    artifact_store,
    engine_of,
    has_checkpoint,
    point_checkpoints,
    read_meta,
    release,
    remove_intermediate_checkpoints,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("optuna_search")


# -- what the runner gets and gives back -------------------------------------------------------
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
    """Raised once the trial is recorded (the run stops: Ctrl-C, SIGTERM, a full disk)."""
    predictions: dict[str, list[dict[str, Any]]] | None = None
    """A COMPLETE trial's predictions per split ("predictions", "validation-predictions")."""


class Reporter(Protocol):
    """Where a running trial's validation points go (the pruner's input)."""

    def report(self, step: int, value: float) -> None: ...

    def should_prune(self) -> bool: ...


@dataclass(frozen=True)
class Job:
    """One trial to run, as the runner sees it."""

    params: dict[str, Any]
    number: int
    position: tuple[int, int]
    """(n, N): the n-th configuration of N, for progress lines."""
    attempts: int
    rung: int | None
    reporter: Reporter
    on_checkpoint: Callable[[], None] = lambda: None
    """Called after each checkpoint is written (the remote uploads it in the background)."""


class Runner(Protocol):
    """What runs a trial (``_trial.TrialRunner``; tests use fakes)."""

    def describe(self, job: Job) -> TrialRecord:
        """The trial's starting record (written when it starts): at least its attempt."""

    def run(self, job: Job) -> TrialOutcome:
        """Train and evaluate the job's configuration (to its rung); say how it ended."""


class _LedgerReporter:
    def __init__(self, ledger: Ledger, trial: optuna.Trial) -> None:
        self.ledger, self.trial = ledger, trial

    def report(self, step: int, value: float) -> None:
        self.ledger.report(self.trial, step, value)

    def should_prune(self) -> bool:
        return self.ledger.should_prune(self.trial)


@dataclass
class RunOutcome:
    study: optuna.Study
    state: StudyState
    ran: int
    budget_reached: bool = False


def schedule_of(config: Config) -> Schedule:
    if config.halving:
        adaptive = Adaptive() if config.study.promote == "adaptive" else None
        return SuccessiveHalving(len(config.study.rungs), config.study.eta, list(config.data.fields), adaptive)
    return TrialSchedule()


def study_state(study: optuna.Study, config: Config) -> StudyState:
    """Where a study stands: its points, their status, its target, its promotions."""
    sampler = (
        study.sampler
        if config.is_grid and isinstance(study.sampler, PointSampler)
        else (make_sampler(config) if config.is_grid else None)
    )
    return read_state(config, study.get_trials(deepcopy=False), sampler, read_meta(study))


class Scheduler:
    """Runs a study's remaining work through ``runner``; every change of a trial's state
    goes through ``ledger``."""

    def __init__(
        self, study: optuna.Study, config: Config, runner: Runner, ledger: Ledger | None = None, remote: Any = None
    ) -> None:
        self.study, self.config, self.runner = study, config, runner
        self.fields = list(config.data.fields)
        self.ledger = ledger or Ledger(study, self.fields, artifacts=artifact_store(config.storage.artifacts))
        self.remote = remote
        """The run's RemoteSession (``_remote``): told of every commit and checkpoint; None without one."""
        if remote is not None:
            self.ledger.subscribe(remote.on_commit)
        self.dists = fitted_distributions(config, study.get_trials(deepcopy=False))
        self.sampler = study.sampler if config.is_grid else None
        self.schedule = schedule_of(config)
        self.rungs = list(config.study.rungs) if config.halving else []
        self._released: set[str] = set()

    def state(self) -> StudyState:
        return self._read_state(self.study.get_trials(deepcopy=False))

    def _read_state(self, trials: list[FrozenTrial]) -> StudyState:
        # The study's meta holds the rungs' promotions: successive halving's alone.
        return read_state(self.config, trials, self.sampler, read_meta(self.study) if self.rungs else None)

    def run(
        self,
        *,
        retry_failed: bool = False,
        deadline: float | None = None,
        wait_for_others: bool = True,
        after_trial: Callable[[Any, StudyState], None] | None = None,
    ) -> RunOutcome:
        ran, budget_stopped = 0, False
        lock = ClaimLock(engine_of(self.study), self.study.study_name)
        while True:
            raise_if_stop_requested()  # SIGTERM between trials: start nothing new
            with lock:
                state = self._reconciled_state()
                left = None if deadline is None else deadline - time.monotonic()
                action = (
                    BudgetStop("the running trial stopped at a checkpoint")
                    if budget_stopped
                    else decide(
                        self.schedule,
                        state,
                        retry_failed=retry_failed,
                        seconds_left=left,
                        checkpointed=self._checkpointed,
                    )
                )
                if isinstance(action, (Promote, PruneRest)):
                    self._settle_rung(action, state)
                    continue
                started = self._start(action, state) if isinstance(action, (Train, New)) else None
            if isinstance(action, BudgetStop):
                log.info("time budget: %s; stopping", action.reason)
                return RunOutcome(self.study, self.state(), ran, budget_reached=True)
            if isinstance(action, Done):
                return RunOutcome(self.study, state, ran)
            if isinstance(action, Wait):
                if wait_for_others and self._wait_for(state, action.keys):
                    continue
                return RunOutcome(self.study, state, ran)
            if started is None:
                continue  # the retry went to another process: decide again
            trial, attempts = started
            outcome = self._run(trial, state, attempts, action.rung)
            budget_stopped = outcome.kind == Outcome.BUDGET
            ran += 1
            if after_trial is not None:
                after_trial(self.study, self.state())

    def _run(self, trial: optuna.Trial, state: StudyState, attempts: int, rung: int | None) -> TrialOutcome:
        job = Job(
            dict(trial.params),
            trial.number,
            self._position(state, trial),
            attempts,
            rung,
            _LedgerReporter(self.ledger, trial),
            (lambda: self.remote.on_checkpoint(trial.params)) if self.remote is not None else (lambda: None),
        )
        if self.remote is not None:
            self.remote.before_point(dict(trial.params))
        # A resumed (paused) trial's earlier segments; a new trial has no attrs to read.
        before = self.ledger.record_of(trial) if trial.user_attrs else TrialRecord()
        self.ledger.start(trial, self.runner.describe(job))
        with self.ledger.heartbeat(trial):
            outcome = self.runner.run(job)
        outcome.record = _summed(before, outcome.record)
        self._finish(trial, outcome, rung)
        return outcome

    def _position(self, state: StudyState, trial: optuna.Trial) -> tuple[int, int]:
        if not self.rungs:
            return min(state.finished + 1, state.n_target), state.n_target
        # Successive halving: the configuration's place among all of them.
        order = {p.key: i for i, p in enumerate(sorted(state.points, key=lambda p: p.order if p.trials else 10**9))}
        key = point_key(trial.params)  # a trial just created for a promotion is not in the state yet
        return min(order[key] + 1 if key in order else len(state.points) + 1, state.n_target), state.n_target

    # -- how it ended: one ledger call ---------------------------------------------------------
    def _finish(self, trial: optuna.Trial, outcome: TrialOutcome, rung: int | None) -> None:
        """Record the outcome (and pause or tell Optuna); raise what stops the run."""
        try:
            self._record(trial, outcome)
        except Exception as e:
            if outcome.stop is None:
                raise
            # The run is stopping anyway (a signal, the budget, a lost remote): it still stops,
            # and the user learns what its record lacks and what happens to the trial.
            log.error(
                "trial %d (%s) could not be recorded while the run stopped (%s: %s): it stays RUNNING in the "
                "study and the next run resumes it from its last checkpoint; what it did since is not in its record",
                trial.number,
                outcome.kind.value,
                type(e).__name__,
                str(e)[:300],
            )
        if outcome.stop is not None:
            raise outcome.stop

    def _record(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        kind, record = outcome.kind, outcome.record
        if kind == Outcome.COMPLETE:
            split = self.config.eval.objective_split
            self.ledger.complete(
                trial,
                record,
                outcome.values or [],
                predictions=outcome.predictions,
                note=lambda full: trial_note(full, self.config, self.fields, split),
            )
        elif kind == Outcome.PRUNED:
            self.ledger.prune(trial, record)
        elif kind == Outcome.PAUSED or (self.rungs and kind in (Outcome.BUDGET, Outcome.INTERRUPTED)):
            # Successive halving keeps one trial per configuration: it waits, paused, at
            # the last rung it reached, and the same trial resumes from its checkpoint.
            self.ledger.pause(trial, record, record.rung if record.rung is not None else -1)
        elif kind == Outcome.FAILED:
            self.ledger.fail(trial, record)
        else:
            self.ledger.interrupt(trial, record)

    def _settle_rung(self, action: Promote | PruneRest, state: StudyState) -> None:
        """Store a rung's promotions (once), or end the configurations left behind."""
        names = {p.key: p.label for p in state.points}
        if isinstance(action, Promote):
            self.ledger.promote(action.rung, list(action.keys), final=action.final, evidence=action.evidence)
            if action.evidence is not None:
                log.info("%s", evidence_line(action.rung, self.rungs, action.evidence, names))
                if not action.final:
                    return  # a step: the next rung's evidence decides the rest
            log.info(
                "rung %d (%.0f%% of training) decided: %s go on",
                action.rung + 1,
                100 * self.rungs[action.rung],
                ", ".join(names[k] for k in action.keys),
            )
            records = [r for p in state.points for r in p.records(list(self.config.data.fields))]
            for decision in rung_decisions(records, {str(action.rung): list(action.keys)}, self.config):
                log.info("%s", rung_line(decision))
            assert isinstance(self.schedule, SuccessiveHalving)
            tied = tied_at_the_cut(self.schedule.configs(state), action.rung, len(action.keys))
            if tied:
                log.warning(
                    "rung %d: %s tie at the cut (same %s); the promotion went by order, not by merit",
                    action.rung + 1,
                    ", ".join(names[k] for k in tied),
                    self.config.study.prune_on,
                )
            return
        by_key = state.by_key()
        for p in (by_key[k] for k in action.keys):
            if p.paused_trial is not None:
                self.ledger.prune_paused(p.paused_trial)
                why = (
                    "cut by what the ones that went on did at the next rung"
                    if self.config.study.promote == "adaptive"
                    else f"not among the best 1/{self.config.study.eta}"
                )
                log.info("%s pruned at rung %d (%s)", p.label, action.rung + 1, why)

    # -- starting a trial -------------------------------------------------------------------
    def _start(self, action: Train | New, state: StudyState) -> tuple[optuna.Trial, int] | None:
        """The trial for ``action``, created (or claimed, or resumed) through the ledger
        under the claim lock, so every other worker sees it RUNNING at once; and its
        attempt number (None: another process claimed the retry first)."""
        if isinstance(action, New):
            return self.ledger.new(self.dists), 1
        point = state.by_key()[action.key]
        attempts = len(point.trials) + 1
        if point.status == Status.PAUSED:
            frozen = point.paused_trial
            assert frozen is not None
            previous = TrialRecord.from_trial(frozen, self.fields).attempts or len(point.trials)
            return self.ledger.resume_paused(frozen), previous + (1 if frozen.user_attrs.get("interrupted") else 0)
        if point.status == Status.WAITING:
            # This point's own retry (Optuna's ask would pop the oldest WAITING trial,
            # whichever point it holds), with the params of the trial it retries.
            waiting = point.waiting_trial
            assert waiting is not None
            trial = self.ledger.claim_waiting(waiting)
            return (trial, len(point.trials)) if trial is not None else None
        return self.ledger.new(self.dists, point.params, self.sampler), attempts

    # -- the study's housekeeping ---------------------------------------------------------------
    def _reconciled_state(self) -> StudyState:
        trials = self.study.get_trials(deepcopy=False)
        if self.ledger.reconcile(self.config.storage.grace_period, trials):
            trials = self.study.get_trials(deepcopy=False)
        state = self._read_state(trials)
        if self._set_aside_retries_outside_the_grid(trials, state):
            state = self.state()
        for p in state.points:
            # Once a point is finished (in the database, not before) its intermediate
            # checkpoints are dead weight; its final adapter stays. A pruned point is
            # never resumed: its checkpoints go.
            if p.status.finished and p.key not in self._released:
                folder = self._folder(p)
                release(folder) if p.status == Status.PRUNED else remove_intermediate_checkpoints(folder)
                self._released.add(p.key)
        return state

    def _set_aside_retries_outside_the_grid(self, trials: list[FrozenTrial], state: StudyState) -> int:
        """WAITING retries of points the grid no longer has (it shrank): set aside."""
        if not self.config.is_grid:
            return 0
        in_grid = {t.number for p in state.points for t in p.trials}
        outside = [t for t in trials if t.state.name == "WAITING" and t.number not in in_grid]  # no point holds them
        for t in outside:
            if self.ledger.set_aside(t, "its point is no longer in the grid"):
                log.warning(
                    "trial %d (%s) waited for a retry, but its point is no longer in the grid: set aside as "
                    "interrupted (a grid with that point again resumes it from its checkpoint)",
                    t.number,
                    ", ".join(f"{k}={v}" for k, v in t.params.items()) or "no params",
                )
        return len(outside)

    def _folder(self, p: Point):
        return point_checkpoints(self.config.train.output_dir, self.config.study.name, p.params)

    def _checkpointed(self, p: Point) -> bool:
        return has_checkpoint(self._folder(p))

    def _wait_for(self, state: StudyState, keys: tuple[str, ...]) -> bool:
        """Other processes hold the remaining points: wait until they finish, or until
        their heartbeat goes stale and the point comes back to us. True when there is news."""
        names = {p.key: p.label for p in state.points}
        log.info(
            "waiting for %s, RUNNING in another process (a dead one is detected after %ds)",
            ", ".join(names.get(k, k) for k in keys),
            self.config.storage.grace_period,
        )
        running = tuple(p.key for p in state.of(Status.RUNNING))
        while True:
            time.sleep(min(5, self.config.storage.heartbeat_interval))
            self.ledger.reconcile(self.config.storage.grace_period)
            if tuple(p.key for p in self.state().of(Status.RUNNING)) != running:
                return True


def _summed(before: TrialRecord, now: TrialRecord) -> TrialRecord:
    """A trial resumed after a pause counts the time of all its segments."""
    changes = {}
    for name in ("seconds_spent", "train_seconds"):
        earlier, this = getattr(before, name), getattr(now, name)
        if earlier is not None and this is not None:
            changes[name] = round(earlier + this, 2)
    return now.replace(**changes) if changes else now


__all__ = [
    "Action",
    "Job",
    "Outcome",
    "Reporter",
    "RunOutcome",
    "Runner",
    "Scheduler",
    "TrialOutcome",
    "schedule_of",
    "study_state",
]
