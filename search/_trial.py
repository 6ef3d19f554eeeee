"""The runner: one trial through the study's objective, and how it ended.

``TrialRunner.run(trial)`` builds the objective's request from the trial's params,
keeps the trial's heartbeat while it trains, reports the validation signal
(``study.prune_on``) as the trial's intermediate values (asking the pruner after each),
falls back to a smaller batch when the accelerator runs out of memory, saves a finished
trial's predictions and note, and returns a :class:`TrialOutcome`: completed, pruned,
paused at a rung, failed, stopped for the time budget or interrupted. It never tells
Optuna anything; the scheduler does, in one place.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_search.core import Config, TrialParams, TrialRecord, UserError
from optuna_search.core._params import point_key, short_point_key
from optuna_search.core._text import pct
from optuna_search.dashboards._notes import trial_note
from optuna_search.objectives import (
    BudgetExhausted,
    Objective,
    OutOfMemory,
    Stopped,
    StudyData,
    TrialHooks,
    TrialRequest,
    TrialResult,
    ValidationPoint,
    release_memory,
)
from optuna_search.objectives._data import resolve_eval_subset
from optuna_search.objectives._train import stop_step
from optuna_search.search._scheduler import Outcome, TrialOutcome
from optuna_search.search._signals import Terminated, disarm, stop_requested
from optuna_search.storage._artifacts import artifact_store, upload_records
from optuna_search.storage._checkpoints import (
    adapter_digest,
    point_checkpoints,
    read_run_settings,
    restart_with_settings,
    update_run_settings,
)
from optuna_search.storage._internals import heartbeat, stored_trial
from optuna_search.storage._records import read_meta, write_record

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")


class DiskFull(Exception):
    """No space left on the device: nothing more can be saved, the run stops."""


def ids_digest(subset: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()


class TrialRunner:
    def __init__(self, study: "optuna.Study", config: Config, data: StudyData, objective: Objective, *,
                 deadline: float | None = None, worker: str = "0", progress_interval: float = 10.0) -> None:
        self.study, self.config, self.data, self.objective = study, config, data, objective
        self.deadline, self.worker, self.progress_interval = deadline, worker, progress_interval
        self.multi_objective = len(config.study.objectives) > 1
        self.rungs = list(config.study.rungs) if config.halving else []
        self.meta = read_meta(study)

    def run(self, trial: "optuna.Trial", *, position: tuple[int, int], attempts: int, rung: int | None = None) -> TrialOutcome:
        point = {k: trial.params[k] for k in self.config.searched_keys()}
        until = 1.0 if rung is None else self.rungs[rung]
        tag = f"[trial {position[0]}/{position[1]} {short_point_key(point)}]" + (
            f" (to rung {rung + 1}/{len(self.rungs)}, {100 * until:.0f}% of training)" if rung is not None else "")
        folder = point_checkpoints(self.config.train.output_dir, self.config.study.name, point)
        params = self._params(point, folder)
        write_record(self.study, trial, TrialRecord(
            point=point_key(point), lora_alpha=params.lora_alpha, effective_params=params.to_dict(),
            eval_ids_sha256=ids_digest(self.meta.eval_subset or []),
            validation_ids_sha256=ids_digest(self.meta.validation_subset or []),
            attempts=attempts, worker=self.worker, host=socket.gethostname(), eval_method=self.config.eval.method,
        ))
        request = self._request(params, folder, until, trial.number, point)
        log.info("%s starting (attempt %d)", tag, attempts)
        try:
            with heartbeat(self.study, trial):
                result, request = self._train(trial, request, tag)
        except Stopped:
            # SIGTERM: checkpointed at the last step; resumable from there.
            disarm()
            return TrialOutcome(Outcome.INTERRUPTED, TrialRecord(interrupted="SIGTERM"), stop=Terminated())
        except BudgetExhausted as e:
            return TrialOutcome(Outcome.BUDGET, TrialRecord(stopped_by_time_budget=str(e)))
        except (KeyboardInterrupt, UserError) as e:
            # Ctrl-C, SIGTERM or bad input: not the trial's fault, and it resumes from its
            # last checkpoint next time; marked at once, so the next run need not wait for
            # its heartbeat to go stale.
            disarm()
            return TrialOutcome(Outcome.INTERRUPTED, TrialRecord(), stop=e)
        except Exception as e:  # noqa: BLE001 - any training failure is recorded, then the next point runs
            if _disk_full(e, folder):
                where = getattr(e, "filename", None) or folder
                return TrialOutcome(Outcome.INTERRUPTED, TrialRecord(interrupted=f"no space left on device at {where}"),
                                    stop=DiskFull(f"no space left on device at {where}; free some space (old checkpoints, "
                                                  "caches) and run the same command: the trial resumes from its last checkpoint"))
            return self._failed(tag, e)
        return self._outcome(trial, tag, request, result, rung)

    def _params(self, point: dict[str, Any], folder) -> TrialParams:
        params = self.config.trial_params(point)
        # An earlier attempt that ran out of memory checkpointed with a smaller batch.
        settings = {k: v for k, v in read_run_settings(folder).items() if k in ("batch_size", "gradient_accumulation")}
        return params.with_batch(**settings) if settings else params

    def _request(self, params: TrialParams, folder, until: float, number: int, point: dict[str, Any]) -> TrialRequest:
        # Belt and braces: the examples evaluated are exactly the study's stored subsets.
        ds = self.data.dataset
        return TrialRequest(
            params=params, data=ds,
            test_examples=resolve_eval_subset(ds.test, self.meta.eval_subset or []),
            validation_examples=resolve_eval_subset(ds.validation, self.meta.validation_subset or []),
            checkpoint_dir=folder, deadline=self.deadline, train_until=until, validate_at=tuple(self.rungs),
            run_name=f"{self.config.study.name}/trial-{number}/{short_point_key(point)}",
            eval_batch_size=read_run_settings(folder).get("eval_batch_size", self.config.eval.batch_size),
        )

    def _train(self, trial: "optuna.Trial", request: TrialRequest, tag: str) -> tuple[TrialResult, TrialRequest]:
        """Run the objective; when the accelerator runs out of memory, free what the
        attempt left and try again with what that phase needs (``_smaller``)."""
        oom_retries: list[dict[str, Any]] = []
        hooks = TrialHooks(on_validation=lambda vp: self._on_validation(trial, vp),
                           progress=lambda msg: log.info("%s %s", tag, msg), stop_requested=stop_requested,
                           progress_interval=self.progress_interval)
        while True:
            failure: tuple[str, str] | None = None
            try:
                return self.objective(request, hooks), request
            except OutOfMemory as e:
                failure = (e.phase, str(e))
            release_memory()  # the attempt's model is garbage now: collect it before the next loads
            oom_retries.append({"phase": failure[0], "batch_size": request.params.batch_size,
                                "eval_batch_size": request.eval_batch_size, "error": failure[1][:300]})
            request = self._smaller(request, *failure, oom_retries, tag)
            write_record(self.study, trial, TrialRecord(oom_retries=oom_retries))

    def _smaller(self, request: TrialRequest, phase: str, message: str, retries: list[dict[str, Any]],
                 tag: str) -> TrialRequest:
        """The request to retry after running out of memory in ``phase``: the model load
        once more (the memory is free now); an evaluation with half the evaluation batch,
        the training kept (its checkpoints stay); training from the start with half the
        per-device batch and twice the accumulation (same effective batch)."""
        if phase == "load":
            if sum(r["phase"] == "load" for r in retries) > 1:
                raise RuntimeError(f"out of memory while loading the base model, twice, with nothing else loaded: the "
                                   f"model does not fit this device ({message})")
            log.warning("%s out of memory while loading the base model; memory released, loading once more", tag)
            return request
        if phase == "evaluate":
            n = request.eval_batch_size or self.config.eval.batch_size
            if n == 1:
                raise RuntimeError(f"out of memory while evaluating, even at evaluation batch 1: {message}")
            log.warning("%s out of memory while evaluating; retrying with evaluation batch %d (training resumes from "
                        "its checkpoint)", tag, n // 2)
            update_run_settings(request.checkpoint_dir, eval_batch_size=n // 2)
            return dataclasses.replace(request, eval_batch_size=n // 2)
        p = request.params
        if p.batch_size == 1:
            raise RuntimeError(f"out of memory even at per-device batch 1: {message}")
        smaller = p.with_batch(p.batch_size // 2, p.gradient_accumulation * 2)
        log.warning("%s out of memory; retrying with per-device batch %d x accumulation %d",
                    tag, smaller.batch_size, smaller.gradient_accumulation)
        # Checkpoints of the larger batch would replay a different data order.
        restart_with_settings(request.checkpoint_dir, smaller.batch_size, smaller.gradient_accumulation)
        return dataclasses.replace(request, params=smaller)

    def _signal(self, vp: ValidationPoint) -> float | None:
        """The intermediate value of a validation point: study.prune_on, higher is better."""
        return vp.label_logprob if self.config.study.prune_on == "label_logprob" else vp.accuracy

    def _on_validation(self, trial: "optuna.Trial", vp: ValidationPoint) -> bool:
        """Report a validation point; True when the pruner says stop."""
        value = self._signal(vp)
        if self.multi_objective or value is None or vp.point in stored_trial(self.study, trial).intermediate_values:
            return False  # Optuna neither takes intermediate values nor prunes multi-objective studies
        trial.report(value, step=vp.point)
        return not self.rungs and trial.should_prune()

    # -- outcomes --------------------------------------------------------------------
    def _failed(self, tag: str, e: BaseException) -> TrialOutcome:
        message = f"{type(e).__name__}: {e}"[:2000]
        log.error("%s failed: %s", tag, message)
        return TrialOutcome(Outcome.FAILED, TrialRecord(error=message))

    def _outcome(self, trial: "optuna.Trial", tag: str, request: TrialRequest, res: TrialResult, rung: int | None) -> TrialOutcome:
        record = self._result_record(request, res, rung)
        if not self.multi_objective:
            # Points reported by an earlier attempt are on that attempt's trial; report the
            # whole curve here, so this trial's learning curve is complete.
            reported = stored_trial(self.study, trial).intermediate_values
            for vp in res.validation_curve:
                value = self._signal(vp)
                if vp.point not in reported and value is not None:
                    trial.report(value, step=vp.point)
        if res.paused_at_step is not None:
            log.info("%s paused at step %d/%d, %s %s", tag, res.optimizer_steps, res.max_steps, self.config.study.prune_on,
                     _fmt(self._signal(res.validation_curve[-1])) if res.validation_curve else "-")
            return TrialOutcome(Outcome.PAUSED, record)
        if res.pruned_at is not None:
            log.info("%s pruned at validation point %d (validation accuracy %s)", tag, res.pruned_at,
                     pct(res.validation_curve[-1].accuracy) if res.validation_curve else "-")
            return TrialOutcome(Outcome.PRUNED, record)
        record = record.replace(**self._save_predictions(trial, res))
        values = [record.objective_value(name, self.config.eval.objective_split) for name in self.config.study.objectives]
        self._save_note(trial, record)
        t = res.test.scores if res.test else None
        log.info("%s done: test overall %s (%s), %d parse failures, %.1f min", tag, pct(t.overall if t else None),
                 ", ".join(f"{f} {pct(a)}" for f, a in (t.accuracy.items() if t else [])), t.parse_failures if t else 0,
                 (record.minutes or 0))
        return TrialOutcome(Outcome.COMPLETE, record, values=values)

    def _result_record(self, request: TrialRequest, res: TrialResult, rung: int | None) -> TrialRecord:
        import optuna

        p = request.params
        gpus = self.config.train.gpus_per_trial
        test_seconds = res.test.seconds if res.test else None
        rung_values = None
        if self.rungs:
            at = {vp.step: self._signal(vp) for vp in res.validation_curve}
            rung_values = {str(r): at[stop_step(res.max_steps, f)] for r, f in enumerate(self.rungs)
                           if at.get(stop_step(res.max_steps, f)) is not None}
        reached = max((int(r) for r in rung_values), default=None) if rung_values else None
        if not res.trainable_params:  # a result read back from a checkpoint: only its curve and steps
            return TrialRecord(validation_curve=[vp.to_record() for vp in res.validation_curve], rung=reached,
                               rung_values=rung_values, optimizer_steps=res.optimizer_steps, max_steps=res.max_steps,
                               validation_accuracy_curve=[[vp.point, vp.accuracy] for vp in res.validation_curve])
        return TrialRecord(
            test=res.test.scores if res.test else None,
            validation=res.validation.scores if res.validation else None,
            trainable_params=res.trainable_params,
            train_loss_per_epoch=res.train_loss_per_epoch, eval_loss_per_epoch=res.eval_loss_per_epoch,
            validation_accuracy_curve=[[vp.point, vp.accuracy] for vp in res.validation_curve],
            validation_curve=[vp.to_record() for vp in res.validation_curve], rung=reached, rung_values=rung_values,
            train_seconds=round(res.train_seconds, 2),
            eval_seconds=round(test_seconds, 2) if test_seconds is not None else None,
            eval_examples_per_second=round(res.test.scores.n / max(test_seconds, 1e-9), 3) if res.test else None,
            peak_memory_mb=round(res.peak_memory_mb, 1), peak_memory_kind=res.peak_memory_kind,
            resumed_from_step=res.resumed_from_step, optimizer_steps=res.optimizer_steps, max_steps=res.max_steps,
            compute_dtype=res.compute_dtype, environment={**res.environment, "optuna": optuna.__version__},
            batch_size=p.batch_size, gradient_accumulation=p.gradient_accumulation // gpus if gpus > 1 else p.gradient_accumulation,
            gpus_per_trial=gpus, pruned_at_step=res.pruned_at,
            adapter_dir=res.adapter_dir, adapter_sha256=adapter_digest(Path(res.adapter_dir)) if res.adapter_dir else None,
            tracking=_tracking(self.config, request) or None, eval_batch_size=res.eval_batch_size,
        )

    def _save_predictions(self, trial: "optuna.Trial", res: TrialResult) -> dict[str, str | None]:
        store = artifact_store(self.config.storage.artifacts)
        ids = {}
        for name, evaluation in (("predictions", res.test), ("validation-predictions", res.validation)):
            if evaluation is not None:
                ids[name] = upload_records(store, trial, f"{name}-trial{trial.number}.jsonl",
                                           [p.to_record() for p in evaluation.predictions])
        return {"predictions_artifact_id": ids.get("predictions"),
                "validation_predictions_artifact_id": ids.get("validation-predictions")}

    def _save_note(self, trial: "optuna.Trial", record: TrialRecord) -> None:
        import optuna_dashboard

        fields = list(self.config.data.fields)
        stored = stored_trial(self.study, trial)
        full = TrialRecord.from_user_attrs({**stored.user_attrs, **record.to_user_attrs()}, fields, number=trial.number,
                                           params=dict(stored.params))
        optuna_dashboard.save_note(trial, trial_note(full, self.config, fields, self.config.eval.objective_split))


LOW_DISK_BYTES = 64 * 2**20


def _disk_full(e: BaseException, folder: Path) -> bool:
    """No space left: an OSError saying so, or torch's checkpoint writer failing (its
    "[enforce fail at inline_container.cc]" RuntimeError) on a disk that is indeed full."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if isinstance(e, RuntimeError) and ("inline_container" in str(e) or "PytorchStreamWriter" in str(e)):
        probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
        return shutil.disk_usage(probe).free < LOW_DISK_BYTES
    return False


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _tracking(config: Config, request: TrialRequest) -> dict[str, str]:
    out = {}
    for t in config.train.report_to:
        out[t] = str(request.checkpoint_dir / "tensorboard") if t == "tensorboard" else str(request.run_name)
    return out
