"""The Optuna-facing adapter: runs one trial through an objective and records it.

``TrialRunner.run(trial)`` builds the objective's request from the trial's params,
keeps the trial's heartbeat while it trains, reports validation accuracy as the trial's
intermediate values (asking the pruner after each), falls back to a smaller batch when
the accelerator runs out of memory, and finally writes the trial's record (user attrs),
its predictions artifact and its dashboard note, and tells Optuna the outcome.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
from typing import Any

from optuna_search.core import Config, TrialParams, TrialRecord, UserError
from optuna_search.core._params import point_key, short_point_key
from optuna_search.core._record import ATTR_EVAL_SUBSET, ATTR_VALIDATION_SUBSET
from optuna_search.core._text import pct
from optuna_search.dashboards._notes import trial_note
from optuna_search.objectives import (
    BudgetExhausted,
    OutOfMemory,
    Stopped,
    StudyData,
    TrialHooks,
    TrialRequest,
    TrialResult,
)
from optuna_search.objectives._data import resolve_eval_subset
from optuna_search.objectives._ddp import run_distributed
from optuna_search.search._signals import Terminated, disarm, stop_requested
from optuna_search.storage._artifacts import artifact_store, upload_records
from optuna_search.storage._checkpoints import (
    point_checkpoints,
    read_run_settings,
    restart_with_settings,
)
from optuna_search.storage._internals import heartbeat, set_trial_user_attr, stored_trial
from optuna_search.storage._storages import redact_url

log = logging.getLogger("optuna_search")


class TrialFailed(Exception):
    """The trial failed with an error (recorded on it); the study goes on."""


class DiskFull(Exception):
    """No space left on the device: nothing more can be saved, the run stops."""


def write_record(study: Any, trial: Any, record: TrialRecord) -> None:
    """Write a (partial) record's user attrs on a trial: the one writer of user attrs."""
    for key, value in record.to_user_attrs().items():
        set_trial_user_attr(study, trial, key, value)


def ids_digest(subset: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()


class TrialRunner:
    def __init__(self, study: Any, config: Config, data: StudyData, objective: Any, deadline: float | None = None) -> None:
        self.study, self.config, self.data, self.objective, self.deadline = study, config, data, objective, deadline
        self.budget_stopped = False
        self.multi_objective = len(config.study.objectives) > 1
        self._reported: set[int] = set()  # validation points reported on the current trial

    # -- the trial -------------------------------------------------------------------
    def run(self, trial: Any, *, position: tuple[int, int], attempts: int) -> None:
        from optuna.trial import TrialState

        point = {k: trial.params[k] for k in self.config.searched_keys()}
        tag = f"[trial {position[0]}/{position[1]} {short_point_key(point)}]"
        folder = point_checkpoints(self.config.train.output_dir, self.config.study.name, point)
        params = self._params(point, folder)
        request = self._request(params, folder)
        write_record(self.study, trial, TrialRecord(
            point=point_key(point), lora_alpha=params.lora_alpha, effective_params=params.to_dict(),
            eval_ids_sha256=ids_digest(self.study.user_attrs.get(ATTR_EVAL_SUBSET)),
            validation_ids_sha256=ids_digest(self.study.user_attrs.get(ATTR_VALIDATION_SUBSET) or []),
            attempts=attempts, worker=os.environ.get("OPTUNA_SEARCH_WORKER", "0"), host=socket.gethostname(),
            eval_method=self.config.eval.method,
        ))
        log.info("%s starting (attempt %d)", tag, attempts)
        self._reported = set()
        try:
            with heartbeat(self.study, trial):
                result, request = self._train(trial, request, tag)
        except Stopped:
            # SIGTERM: checkpointed at the last step; FAIL at once, resumable from there.
            disarm()
            self._tell_quietly(trial, TrialState.FAIL)
            raise Terminated() from None
        except BudgetExhausted as e:
            write_record(self.study, trial, TrialRecord(stopped_by_time_budget=str(e)))
            self.budget_stopped = True
            self.study.tell(trial, state=TrialState.FAIL)
            return
        except (KeyboardInterrupt, UserError):
            # Ctrl-C, SIGTERM or bad input: not the trial's fault, and it resumes from its
            # last checkpoint next time; FAIL at once, so the next run need not wait for
            # its heartbeat to go stale.
            disarm()
            self._tell_quietly(trial, TrialState.FAIL)
            raise
        except OSError as e:
            if e.errno != errno.ENOSPC:
                self._fail(trial, tag, e)
                return
            self._fail(trial, tag, e, quiet=True)
            raise DiskFull(f"no space left on device at {getattr(e, 'filename', None) or self.config.train.output_dir}; "
                           "free some space (old checkpoints, caches) and run the same command to resume") from None
        except Exception as e:  # noqa: BLE001 - any training failure is recorded, then the next point runs
            self._fail(trial, tag, e)
            return
        self._record(trial, tag, request, result)

    def _params(self, point: dict[str, Any], folder) -> TrialParams:
        params = self.config.trial_params(point)
        # An earlier attempt that ran out of memory checkpointed with a smaller batch.
        settings = read_run_settings(folder)
        return params.with_batch(**settings) if settings else params

    def _request(self, params: TrialParams, folder) -> TrialRequest:
        # Belt and braces: the examples evaluated are exactly the study's stored subsets.
        ds = self.data.dataset
        return TrialRequest(
            params=params, data=ds,
            test_examples=resolve_eval_subset(ds.test, self.study.user_attrs.get(ATTR_EVAL_SUBSET)),
            validation_examples=resolve_eval_subset(ds.validation, self.study.user_attrs.get(ATTR_VALIDATION_SUBSET) or []),
            checkpoint_dir=folder, deadline=self.deadline,
        )

    def _train(self, trial: Any, request: TrialRequest, tag: str) -> tuple[TrialResult, TrialRequest]:
        """Run the objective; on out-of-memory, start the point over with half the
        per-device batch and twice the accumulation (same effective batch)."""
        oom_retries: list[dict[str, Any]] = []
        while True:
            try:
                return self._call_objective(trial, request, tag), request
            except OutOfMemory as e:
                p = request.params
                if p.batch_size == 1:
                    raise RuntimeError(f"out of memory even at per-device batch 1: {e}") from e
                oom_retries.append({"batch_size": p.batch_size, "error": str(e)[:300]})
                smaller = p.with_batch(p.batch_size // 2, p.gradient_accumulation * 2)
                log.warning("%s out of memory; retrying with per-device batch %d x accumulation %d",
                            tag, smaller.batch_size, smaller.gradient_accumulation)
                # Checkpoints of the larger batch would replay a different data order.
                restart_with_settings(request.checkpoint_dir, smaller.batch_size, smaller.gradient_accumulation)
                write_record(self.study, trial, TrialRecord(oom_retries=oom_retries))
                request = TrialRequest(smaller, request.data, request.test_examples, request.validation_examples,
                                       request.checkpoint_dir, request.deadline)

    def _call_objective(self, trial: Any, request: TrialRequest, tag: str) -> TrialResult:
        hooks = TrialHooks(on_validation=lambda n, acc: self._on_validation(trial, n, acc),
                           progress=lambda msg: log.info("%s %s", tag, msg), stop_requested=stop_requested)
        gpus = self.config.train.gpus_per_trial
        if gpus <= 1:
            return self.objective(request, hooks)
        # Same effective batch over the ranks: accumulation is divided by them.
        p = request.params
        ddp = TrialRequest(p.with_batch(p.batch_size, max(1, p.gradient_accumulation // gpus)), request.data,
                           request.test_examples, request.validation_examples, request.checkpoint_dir, request.deadline)
        subsets = {"test": self.study.user_attrs.get(ATTR_EVAL_SUBSET),
                   "validation": self.study.user_attrs.get(ATTR_VALIDATION_SUBSET) or []}
        return run_distributed(self._redacted_config(), ddp, subsets, hooks.progress)

    def _redacted_config(self) -> Config:
        import dataclasses

        c = self.config
        return dataclasses.replace(c, storage=dataclasses.replace(c.storage, url=redact_url(c.storage.url)))

    def _on_validation(self, trial: Any, point: int, accuracy: float) -> bool:
        """Report a validation point; True when the pruner says stop."""
        if self.multi_objective:
            return False  # Optuna neither takes intermediate values nor prunes here
        trial.report(accuracy, step=point)
        self._reported.add(point)
        return trial.should_prune()

    # -- outcomes --------------------------------------------------------------------
    def _fail(self, trial: Any, tag: str, e: BaseException, quiet: bool = False) -> None:
        from optuna.trial import TrialState

        message = f"{type(e).__name__}: {e}"[:2000]
        try:
            write_record(self.study, trial, TrialRecord(error=message))
        finally:
            self._tell_quietly(trial, TrialState.FAIL)
        if not quiet:
            log.error("%s failed: %s", tag, message)

    def _tell_quietly(self, trial: Any, state: Any) -> None:
        try:
            self.study.tell(trial, state=state)
        except Exception:  # noqa: BLE001 - the database itself may be what failed; the heartbeat recovers it
            log.debug("could not mark trial %d %s", trial.number, state.name)

    def _record(self, trial: Any, tag: str, request: TrialRequest, res: TrialResult) -> None:
        from optuna.trial import TrialState

        record = self._result_record(request, res)
        write_record(self.study, trial, record)
        if not self.multi_objective:
            # Points reported by an earlier attempt are on that attempt's trial; report the
            # whole curve here, so this trial's learning curve is complete.
            for n, acc in res.validation_curve:
                if n not in self._reported:
                    trial.report(acc, step=n)
        if res.pruned_at is not None:
            shutil.rmtree(request.checkpoint_dir, ignore_errors=True)  # a pruned trial releases its checkpoints
            self.study.tell(trial, state=TrialState.PRUNED)
            log.info("%s pruned at validation point %d (validation accuracy %s)", tag, res.pruned_at,
                     pct(res.validation_curve[-1][1]) if res.validation_curve else "-")
            return
        self._save_predictions(trial, res)
        self._save_note(trial)
        values = [record.objective_value(name, self.config.eval.objective_split) for name in self.config.study.objectives]
        self.study.tell(trial, values if len(values) > 1 else values[0])
        t = res.test.scores if res.test else None
        log.info("%s done: test overall %s (%s), %d parse failures, %.1f min", tag, pct(t.overall if t else None),
                 ", ".join(f"{f} {pct(a)}" for f, a in (t.accuracy.items() if t else [])), t.parse_failures if t else 0,
                 (record.minutes or 0))

    def _result_record(self, request: TrialRequest, res: TrialResult) -> TrialRecord:
        import optuna

        p = request.params
        gpus = self.config.train.gpus_per_trial
        test_seconds = res.test.seconds if res.test else None
        return TrialRecord(
            test=res.test.scores if res.test else None,
            validation=res.validation.scores if res.validation else None,
            trainable_params=res.trainable_params,
            train_loss_per_epoch=res.train_loss_per_epoch, eval_loss_per_epoch=res.eval_loss_per_epoch,
            validation_accuracy_curve=[[n, acc] for n, acc in res.validation_curve],
            train_seconds=round(res.train_seconds, 2),
            eval_seconds=round(test_seconds, 2) if test_seconds is not None else None,
            eval_examples_per_second=round(res.test.scores.n / max(test_seconds, 1e-9), 3) if res.test else None,
            peak_memory_mb=round(res.peak_memory_mb, 1), peak_memory_kind=res.peak_memory_kind,
            resumed_from_step=res.resumed_from_step, optimizer_steps=res.optimizer_steps, compute_dtype=res.compute_dtype,
            environment={**res.environment, "optuna": optuna.__version__},
            batch_size=p.batch_size, gradient_accumulation=p.gradient_accumulation // gpus if gpus > 1 else p.gradient_accumulation,
            gpus_per_trial=gpus, pruned_at_step=res.pruned_at,
        )

    def _save_predictions(self, trial: Any, res: TrialResult) -> None:
        store = artifact_store(self.config.storage.artifacts)
        ids = {}
        for name, evaluation in (("predictions", res.test), ("validation-predictions", res.validation)):
            if evaluation is not None:
                ids[name] = upload_records(store, trial, f"{name}-trial{trial.number}.jsonl",
                                           [p.to_record() for p in evaluation.predictions])
        write_record(self.study, trial, TrialRecord(predictions_artifact_id=ids.get("predictions"),
                                                    validation_predictions_artifact_id=ids.get("validation-predictions")))

    def _save_note(self, trial: Any) -> None:
        import optuna_dashboard

        fields = list(self.config.data.fields)
        stored = stored_trial(self.study, trial)
        full = TrialRecord.from_user_attrs(stored.user_attrs, fields, number=trial.number, params=dict(stored.params))
        optuna_dashboard.save_note(trial, trial_note(full, self.config.to_dict(), fields, self.config.eval.objective_split))
