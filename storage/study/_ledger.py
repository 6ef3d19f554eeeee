"""The trial ledger: the only code that moves a trial through its life.

    new / claim_waiting / resume_paused        a trial starts (created, a retry claimed,
                                               a paused configuration resumed)
    start                                      its starting record (point, attempts, host)
    report / should_prune                      its validation points (the pruner's input)
    complete / prune / pause / fail / interrupt  how it ended, with its record, in one call
    prune_paused                               a paused configuration not promoted
    promote                                    a rung's decision (successive halving)
    reconcile                                  trials whose process died: failed (and
                                               re-queued by the storage's retry callback)
    copy_in                                    finished trials of another study (warm start)

Every operation is one step of the study's history, made under the caller's claim lock
where several workers could race, and ends by telling the ``on_commit`` listeners what
changed (a :class:`Commit`): the remote copy of a study (``storage._remote``) pushes the
database snapshot and the point's checkpoint on exactly these moments. Nothing else in
the project calls ``tell``, ``enqueue_trial``, ``add_trials``, ``fail_stale_trials`` or
a storage setter (``tests/test_layers.py`` scans for them); the samplers' own bookkeeping
(GridSampler's grid id) and Optuna's private calls stay in ``storage._internals``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from optuna_search.core import Status, StudyMeta, TrialRecord
from optuna_search.storage.study._internals import (
    beat,
    claim_waiting,
    fail_trial,
    heartbeat,
    live_trial,
    pause,
    running_trials_without_heartbeat,
    set_trial_user_attrs,
    stored_trial,
    unpause,
)
from optuna_search.storage.study._records import read_meta, write_meta

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, Trial

ENDING = ("interrupted", "stopped_by_time_budget", "orphaned", "error")
"""Record fields saying how an attempt ended: cleared when the trial runs again."""
COPIED = ENDING + ("seconds_spent", "train_seconds", "eval_seconds", "oom_retries")
"""What a claimed retry must not carry on of the attempt it retries (Optuna's retry copies
the stale trial's user attrs; that attempt's time is counted on its own trial)."""


class CommitKind(str, Enum):
    """The ledger's operations, as its listeners (the remote sync) see them."""

    NEW = "new"
    CLAIM = "claim"
    RESUME = "resume"
    COMPLETE = "complete"
    PRUNE = "prune"
    PAUSE = "pause"
    FAIL = "fail"
    INTERRUPT = "interrupt"
    PROMOTE = "promote"
    RECONCILE = "reconcile"
    COPY_IN = "copy_in"
    CREATE = "create"
    """The study was created (the remote holds it from the start)."""
    OPEN = "open"
    """An existing study was opened by a run."""


@dataclass(frozen=True)
class Commit:
    """What one ledger operation changed: ``kind`` is the operation's name, ``number``
    the trial's (None for a study-wide change), ``params`` its point."""

    kind: CommitKind
    number: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    """The trial ended for good (complete, pruned, failed): its point's checkpoints are final."""


Listener = Callable[[Commit], None]


def create_study(
    name: str, storage: Any, sampler: Any, pruner: Any, directions: list[str], metric_names: list[str]
) -> optuna.Study:
    """A new study (Optuna's ``create_study``) with its objectives' names: studies are
    created here, as trials are, and nowhere else. Optuna's own "A new study created" line
    is not shown (our log says what the run does; the Python API leaves Optuna's logging
    as its caller set it otherwise)."""
    import logging

    import optuna

    quiet = logging.getLogger("optuna.storages._rdb.storage")
    was = quiet.level
    quiet.setLevel(max(was, logging.WARNING))
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=directions,  # type: ignore[arg-type]  # "minimize"/"maximize", checked in core
        )
    finally:
        quiet.setLevel(was)
    study.set_metric_names(metric_names)
    return study


@runtime_checkable
class PointSampler(Protocol):
    """A sampler whose next trial's point is chosen by the scheduler (the grid's
    ``GridPointSampler``): the ledger creates that trial while the sampler claims it."""

    def claiming(self, point: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
        """While open, the next trial the study asks for is created for ``point``."""
        ...

    def point_of(self, trial: FrozenTrial) -> dict[str, Any] | None:
        """The point of a trial created for this sampler's grid whose params were never set."""
        ...


class Ledger:
    """The study's trials as a ledger of lifecycle operations (see the module docstring)."""

    def __init__(self, study: optuna.Study, fields: list[str] | None = None, *, artifacts: Any = None) -> None:
        self.study = study
        self.fields = list(fields or [])
        """The label fields (to read trial records back)."""
        self.artifacts = artifacts
        """An Optuna artifact store for the trials' predictions (None: none stored)."""
        self.listeners: list[Listener] = []
        self._own: dict[int, dict[str, Any]] = {}
        """The user attrs written so far to the trials this process created (their only
        writer while they run), so a trial's full record needs no read back."""

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def _commit(self, kind: CommitKind, trial: Trial | FrozenTrial | None = None, *, finished: bool = False) -> None:
        event = Commit(
            kind, None if trial is None else trial.number, dict(trial.params) if trial is not None else {}, finished
        )
        if trial is not None and kind not in (CommitKind.NEW, CommitKind.CLAIM, CommitKind.RESUME):
            self._own.pop(trial.number, None)  # it ended or paused: no longer this process's alone
        for listener in self.listeners:
            listener(event)

    # -- a trial starts --------------------------------------------------------------
    def new(self, distributions: dict[str, Any], params: dict[str, Any] | None = None, sampler: Any = None) -> Trial:
        """A new RUNNING trial: at ``params`` (a grid's point through its sampler, or a
        fixed point), else where the study's sampler proposes."""
        if params is not None and isinstance(sampler, PointSampler):
            with sampler.claiming(params):
                trial = self.study.ask(distributions)
        else:
            if params is not None:
                self.study.enqueue_trial(params, skip_if_exists=False)
            trial = self.study.ask(distributions)
        beat(self.study, trial)
        self._own[trial.number] = {}
        self._commit(CommitKind.NEW, trial)
        return trial

    def claim_waiting(self, frozen: FrozenTrial) -> Trial | None:
        """A WAITING retry of a killed trial, now RUNNING here (None: another process
        claimed it first); what the killed attempt recorded about its ending is cleared."""
        trial = claim_waiting(self.study, frozen)
        if trial is not None:
            beat(self.study, trial)
            self._clear(trial, COPIED)
            self._commit(CommitKind.CLAIM, trial)
        return trial

    def set_aside(self, frozen: FrozenTrial, reason: str) -> bool:
        """A WAITING retry this study will not run (its point left the grid): failed as
        interrupted, saying why, so that Optuna's ``ask`` (which takes up the oldest
        WAITING trial) never runs it for another point. False: another process took it."""
        from optuna.trial import TrialState

        trial = claim_waiting(self.study, frozen)
        if trial is None:
            return False
        self._write(trial, TrialRecord(interrupted=reason))
        self.study.tell(trial, state=TrialState.FAIL)
        self._commit(CommitKind.INTERRUPT, trial)
        return True

    def resume_paused(self, frozen: FrozenTrial) -> Trial:
        """A configuration paused at a rung, promoted (or interrupted there): RUNNING again."""
        beat(self.study, frozen)  # before the pause mark goes: never RUNNING without a heartbeat
        unpause(self.study, frozen)
        trial = live_trial(self.study, frozen)
        self._clear(trial, ENDING)
        self._commit(CommitKind.RESUME, trial)
        return trial

    def start(self, trial: Trial, record: TrialRecord) -> None:
        """The starting record: point, attempts, worker, host, what it is evaluated on."""
        self._write(trial, record)

    @contextlib.contextmanager
    def heartbeat(self, trial: Trial) -> Iterator[None]:
        """The trial's heartbeat while it trains: a dead process's trial goes stale."""
        with heartbeat(self.study, trial):
            yield

    # -- while it trains ---------------------------------------------------------------
    def report(self, trial: Trial, step: int, value: float) -> None:
        """A validation point's value (an intermediate value), once per step."""
        if step not in stored_trial(self.study, trial).intermediate_values:
            trial.report(value, step=step)

    def should_prune(self, trial: Trial) -> bool:
        return bool(trial.should_prune())

    # -- how it ended --------------------------------------------------------------------
    def complete(
        self,
        trial: Trial,
        record: TrialRecord,
        values: list[float],
        *,
        predictions: dict[str, list[dict[str, Any]]] | None = None,
        note: Callable[[TrialRecord], str] | None = None,
    ) -> None:
        """Finished: its predictions stored as artifacts, its record and note written, then
        Optuna told its values (the last step: a kill before it leaves a resumable trial)."""
        record = self._with_earlier_rungs(trial, record.replace(**self._store_predictions(trial, predictions or {})))
        attrs = record.to_user_attrs()
        if note is None:
            set_trial_user_attrs(self.study, trial, attrs)
        else:  # the note shows the whole record: what the trial's start wrote too
            set_trial_user_attrs(self.study, trial, attrs, note=note(self._full_record(trial, attrs)))
        self.study.tell(trial, values if len(values) > 1 else values[0])
        self._commit(CommitKind.COMPLETE, trial, finished=True)

    def prune(self, trial: Trial, record: TrialRecord) -> None:
        from optuna.trial import TrialState

        self._write(trial, record)
        self.study.tell(trial, state=TrialState.PRUNED)
        self._commit(CommitKind.PRUNE, trial, finished=True)

    def pause(self, trial: Trial, record: TrialRecord, rung: int) -> None:
        """Stopped at a rung's checkpoint (successive halving), or interrupted between
        rungs: the same trial waits, RUNNING without a heartbeat, and resumes later."""
        self._write(trial, self._with_earlier_rungs(trial, record))
        pause(self.study, trial, rung)
        self._commit(CommitKind.PAUSE, trial)

    def _with_earlier_rungs(self, trial: Trial, record: TrialRecord) -> TrialRecord:
        """One rung's evidence (per-example scores) with the earlier rungs' beside it."""
        if not record.rung_examples:
            return record
        before = stored_trial(self.study, trial).user_attrs.get("rung_examples") or {}
        return dataclasses.replace(record, rung_examples={**before, **record.rung_examples})

    def fail(self, trial: Trial, record: TrialRecord) -> None:
        """An error of this configuration (its message in ``record.error``): it waits for
        ``run --retry-failed``."""
        from optuna.trial import TrialState

        self._write(trial, record)
        self.study.tell(trial, state=TrialState.FAIL)
        self._commit(CommitKind.FAIL, trial, finished=True)

    def interrupt(self, trial: Trial, record: TrialRecord) -> None:
        """Stopped by something that is not its fault (Ctrl-C, SIGTERM, the time budget,
        bad input, a full disk): FAIL without an error, resumed from its checkpoint next time."""
        from optuna.trial import TrialState

        self._write(trial, record)
        self.study.tell(trial, state=TrialState.FAIL)
        self._commit(CommitKind.INTERRUPT, trial)

    def prune_paused(self, frozen: FrozenTrial) -> None:
        """A paused configuration that a rung did not promote."""
        from optuna.trial import TrialState

        self.study.tell(live_trial(self.study, frozen), state=TrialState.PRUNED)
        self._commit(CommitKind.PRUNE, frozen, finished=True)

    def promote(self, rung: int, keys: list[str], *, final: bool = True, evidence: dict | None = None) -> None:
        """A rung's promotions, stored on the study: decided once (``final``), or one step
        of an adaptive promotion, kept open for the next, with the evidence that decided it."""
        halving = dict(self.meta().halving or {})
        halving["promoted"] = {**halving.get("promoted", {}), str(rung): list(keys)}
        open_rungs = set(halving.get("open", [])) - {rung} | (set() if final else {rung})
        halving["open"] = sorted(open_rungs)
        if evidence is not None:
            decisions = dict(halving.get("decisions", {}))
            decisions[str(rung)] = [*decisions.get(str(rung), []), evidence]
            halving["decisions"] = decisions
        self.write_meta(StudyMeta(halving=halving))
        self._commit(CommitKind.PROMOTE)

    # -- housekeeping ----------------------------------------------------------------------
    def reconcile(self, grace_period: float, trials: list[FrozenTrial] | None = None) -> int:
        """Fail the trials whose process died: a stale heartbeat (Optuna's check; its retry
        callback re-queues them WAITING), and RUNNING trials that never had a heartbeat,
        older than the grace period (a process killed between creating its trial and its
        first heartbeat). ``trials``: the study's trials as just read, if the caller has
        them. Returns how many were failed (0: the study is as it was read)."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        if trials is None:
            trials = self.study.get_trials(deepcopy=False)
        before = {t.number for t in trials if t.state == TrialState.RUNNING}
        if not before:
            return 0  # nothing RUNNING: nothing can be stale (the common case between trials)
        fail_stale_trials(self.study)
        failed = 0
        for t in running_trials_without_heartbeat(self.study, self.study.get_trials(deepcopy=False), grace_period):
            self._write(t, TrialRecord(orphaned="its process died before its heartbeat started"))
            failed += fail_trial(self.study, t)
        after = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        gone = len(before - after)
        if gone:
            self._commit(CommitKind.RECONCILE)
        return max(gone, failed)

    def copy_in(self, trials: list[FrozenTrial], source: str, skipped: list[str]) -> None:
        """Finished trials of another study, added as they are (a warm start)."""
        self.study.add_trials(trials)
        self.write_meta(StudyMeta(warm_start={"study": source, "trials": len(trials), "skipped": skipped}))
        self._commit(CommitKind.COPY_IN)

    # -- records -------------------------------------------------------------------------
    def meta(self) -> StudyMeta:
        return read_meta(self.study)

    def write_meta(self, meta: StudyMeta) -> None:
        write_meta(self.study, meta)

    def record_of(self, trial: Trial | FrozenTrial) -> TrialRecord:
        """The trial's record as stored now (a live trial's own copy lags behind)."""
        return TrialRecord.from_trial(stored_trial(self.study, trial), self.fields)

    def _write(self, trial: Trial | FrozenTrial, record: TrialRecord) -> None:
        attrs = record.to_user_attrs()
        set_trial_user_attrs(self.study, trial, attrs)
        if trial.number in self._own:
            self._own[trial.number].update(attrs)

    def _full_record(self, trial: Trial, attrs: dict[str, Any]) -> TrialRecord:
        """A RUNNING trial's record with ``attrs`` written: from what this process wrote
        to a trial it created, else (a retry, a resumed configuration) as stored."""
        own = self._own.pop(trial.number, None)
        if own is None:
            stored = stored_trial(self.study, trial)
            stored.user_attrs = {**stored.user_attrs, **attrs}
            return TrialRecord.from_trial(stored, self.fields)
        return TrialRecord.from_user_attrs(
            {**own, **attrs},
            self.fields,
            number=trial.number,
            state=Status.RUNNING,
            params=dict(trial.params),
            datetime_start=trial.datetime_start,
        )

    def _clear(self, trial: Trial, keys: tuple[str, ...]) -> None:
        ua = stored_trial(self.study, trial).user_attrs
        set_trial_user_attrs(self.study, trial, {key: None for key in keys if ua.get(key) is not None})

    def _store_predictions(self, trial: Trial, predictions: dict[str, list[dict[str, Any]]]) -> dict[str, str | None]:
        """Upload each split's predictions as a JSON-lines artifact of the trial."""
        ids: dict[str, str | None] = {}
        if self.artifacts is None:
            return ids
        from optuna.artifacts import upload_artifact

        for name, rows in predictions.items():
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}-trial{trial.number}.jsonl"
                path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                ids[name] = upload_artifact(
                    artifact_store=self.artifacts,
                    file_path=str(path),
                    study_or_trial=trial,
                    mimetype="application/jsonl",
                )
        return {
            "predictions_artifact_id": ids.get("predictions"),
            "validation_predictions_artifact_id": ids.get("validation-predictions"),
        }
