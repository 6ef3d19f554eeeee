"""The runner: one trial through the study's objective, and how it ended.

``TrialRunner.run(job)`` builds the objective's request from the job's params, reports
the validation signal (``study.prune_on``) to the job's reporter (which asks the pruner),
falls back to what fits when the accelerator runs out of memory (by phase: the load once
more, half the training batch from step 0, half the evaluation batch from the
checkpoint), and returns a :class:`TrialOutcome`: completed (with its predictions),
pruned, paused at a rung, failed, stopped for the time budget or interrupted. It touches
no storage: the scheduler records the outcome through the ledger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from optuna_search.core import (
    Config,
    StudyMeta,
    TrialParams,
    TrialRecord,
    UserError,
    disk_full,
    pct,
    point_key,
    short_point_key,
)
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
    resolve_eval_subset,
    stop_step,
)
from optuna_search.search.loop._scheduler import Job, Outcome, TrialOutcome
from optuna_search.search.loop._signals import Terminated, disarm, stop_requested
from optuna_search.storage import (
    adapter_digest,
    point_checkpoints,
    read_run_settings,
    restart_with_settings,
    update_run_settings,
)

log = logging.getLogger("optuna_search")


class DiskFull(Exception):
    """No space left on the device: nothing more can be saved, the run stops."""


def ids_digest(subset: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()


class TrialRunner:
    def __init__(
        self,
        config: Config,
        data: StudyData,
        objective: Objective,
        meta: StudyMeta,
        *,
        deadline: float | None = None,
        worker: str = "0",
        progress_interval: float = 10.0,
    ) -> None:
        self.config, self.data, self.objective, self.meta = config, data, objective, meta
        self.deadline, self.worker, self.progress_interval = deadline, worker, progress_interval
        self.multi_objective = len(config.study.objectives) > 1
        self.rungs = list(config.study.rungs) if config.halving else []

    def _point(self, job: Job) -> dict[str, Any]:
        return {k: job.params[k] for k in self.config.searched_keys()}

    def _folder(self, job: Job) -> Path:
        return point_checkpoints(self.config.train.output_dir, self.config.study.name, self._point(job))

    def describe(self, job: Job) -> TrialRecord:
        """The trial's starting record: its point, effective params, attempt, where it runs."""
        params = self._params(self._point(job), self._folder(job))
        return TrialRecord(
            point=point_key(self._point(job)),
            lora_alpha=params.lora_alpha,
            effective_params=params.to_dict(),
            eval_ids_sha256=ids_digest(self.meta.eval_subset or []),
            validation_ids_sha256=ids_digest(self.meta.validation_subset or []),
            attempts=job.attempts,
            worker=self.worker,
            host=socket.gethostname(),
            eval_method=self.config.eval.method,
            resumed_at=time.time(),
        )

    def run(self, job: Job) -> TrialOutcome:
        point, folder = self._point(job), self._folder(job)
        until = 1.0 if job.rung is None else self.rungs[job.rung]
        # The trial's number is the study's (the summary, --trial, status, the report and the
        # dashboard name it so); k/N is this point's place in the run, never past N.
        k, n = job.position
        tag = f"[trial {job.number}, point {min(k, n)}/{n}, {short_point_key(point)}]" + (
            f" (rung {job.rung + 1} of {len(self.rungs)}: to {100 * until:.0f}% of training)"
            if job.rung is not None
            else ""
        )
        request = self._request(self._params(point, folder), folder, until, job.number, point)
        log.info("%s starting (attempt %d)", tag, job.attempts)
        t0 = time.monotonic()
        outcome = self._attempt(job, request, tag)
        spent = round(time.monotonic() - t0, 2)
        return dataclasses.replace(outcome, record=outcome.record.replace(seconds_spent=spent))

    def _attempt(self, job: Job, request: TrialRequest, tag: str) -> TrialOutcome:
        oom_retries: list[dict[str, Any]] = []
        try:
            result, request = self._train(job, request, tag, oom_retries)
        except Stopped:
            # SIGTERM: checkpointed at the last step; resumable from there.
            disarm()
            return TrialOutcome(
                Outcome.INTERRUPTED,
                TrialRecord(interrupted="SIGTERM", oom_retries=oom_retries or None),
                stop=Terminated(),
            )
        except BudgetExhausted as e:
            return TrialOutcome(
                Outcome.BUDGET, TrialRecord(stopped_by_time_budget=str(e), oom_retries=oom_retries or None)
            )
        except (KeyboardInterrupt, UserError) as e:
            # Ctrl-C, SIGTERM or bad input: not the trial's fault, and it resumes from its
            # last checkpoint next time; marked at once, so the next run need not wait for
            # its heartbeat to go stale.
            disarm()
            why = (
                "SIGTERM"
                if isinstance(e, Terminated)
                else "Ctrl-C"
                if isinstance(e, KeyboardInterrupt)
                else "bad input"
            )
            return TrialOutcome(
                Outcome.INTERRUPTED, TrialRecord(interrupted=why, oom_retries=oom_retries or None), stop=e
            )
        except Exception as e:
            if disk_full(e, request.checkpoint_dir):
                where = getattr(e, "filename", None) or request.checkpoint_dir
                return TrialOutcome(
                    Outcome.INTERRUPTED,
                    TrialRecord(interrupted=f"no space left on device at {where}"),
                    stop=DiskFull(
                        f"no space left on device at {where}; free some space (old checkpoints, "
                        "caches) and run the same command: the trial resumes from its last checkpoint"
                    ),
                )
            return self._failed(tag, e, oom_retries)
        outcome = self._outcome(job, tag, request, result)
        if oom_retries:
            outcome.record = outcome.record.replace(oom_retries=oom_retries)
        return outcome

    def _params(self, point: dict[str, Any], folder) -> TrialParams:
        params = self.config.trial_params(point)
        # An earlier attempt that ran out of memory checkpointed with a smaller batch.
        settings = {k: v for k, v in read_run_settings(folder).items() if k in ("batch_size", "gradient_accumulation")}
        return params.with_batch(**settings) if settings else params

    def _request(self, params: TrialParams, folder, until: float, number: int, point: dict[str, Any]) -> TrialRequest:
        # Belt and braces: the examples evaluated are exactly the study's stored subsets.
        ds = self.data.dataset
        return TrialRequest(
            params=params,
            data=ds,
            test_examples=resolve_eval_subset(ds.test, self.meta.eval_subset or []),
            validation_examples=resolve_eval_subset(ds.validation, self.meta.validation_subset or []),
            checkpoint_dir=folder,
            deadline=self.deadline,
            train_until=until,
            validate_at=tuple(self.rungs),
            run_name=f"{self.config.study.name}/trial-{number}/{short_point_key(point)}",
            eval_batch_size=read_run_settings(folder).get("eval_batch_size", self.config.eval.batch_size),
        )

    def _train(
        self, job: Job, request: TrialRequest, tag: str, oom_retries: list[dict[str, Any]]
    ) -> tuple[TrialResult, TrialRequest]:
        """Run the objective; when the accelerator runs out of memory, free what the
        attempt left and try again with what that phase needs (``_smaller``)."""
        hooks = TrialHooks(
            on_checkpoint=job.on_checkpoint,
            on_validation=lambda vp: self._on_validation(job, vp),
            progress=lambda msg: log.info("%s %s", tag, msg),
            stop_requested=stop_requested,
            progress_interval=self.progress_interval,
        )
        while True:
            failure: tuple[str, str] | None = None
            try:
                return self.objective(request, hooks), request
            except OutOfMemory as e:
                failure = (e.phase, str(e))
            release_memory()  # the attempt's model is garbage now: collect it before the next loads
            oom_retries.append(
                {
                    "phase": failure[0],
                    "batch_size": request.params.batch_size,
                    "eval_batch_size": request.eval_batch_size,
                    "error": failure[1][:300],
                }
            )
            request = self._smaller(request, *failure, oom_retries, tag)

    def _smaller(
        self, request: TrialRequest, phase: str, message: str, retries: list[dict[str, Any]], tag: str
    ) -> TrialRequest:
        """The request to retry after running out of memory in ``phase``: the model load
        once more (the memory is free now); an evaluation with half the evaluation batch,
        the training kept (its checkpoints stay); training from the start with half the
        per-device batch and twice the accumulation (same effective batch)."""
        if phase == "load":
            if sum(r["phase"] == "load" for r in retries) > 1:
                raise RuntimeError(
                    f"out of memory while loading the base model, twice, with nothing else loaded: the "
                    f"model does not fit this device ({message})"
                )
            log.warning("%s out of memory while loading the base model; memory released, loading once more", tag)
            return request
        if phase == "evaluate":
            n = request.eval_batch_size or self.config.eval.batch_size
            if n == 1:
                raise RuntimeError(f"out of memory while evaluating, even at evaluation batch 1: {message}")
            log.warning(
                "%s out of memory while evaluating; retrying with evaluation batch %d (training resumes from "
                "its checkpoint)",
                tag,
                n // 2,
            )
            update_run_settings(request.checkpoint_dir, eval_batch_size=n // 2)
            return dataclasses.replace(request, eval_batch_size=n // 2)
        p = request.params
        if p.batch_size == 1:
            raise RuntimeError(f"out of memory even at per-device batch 1: {message}")
        smaller = p.with_batch(p.batch_size // 2, p.gradient_accumulation * 2)
        log.warning(
            "%s out of memory; retrying with per-device batch %d x accumulation %d",
            tag,
            smaller.batch_size,
            smaller.gradient_accumulation,
        )
        # Checkpoints of the larger batch would replay a different data order.
        restart_with_settings(request.checkpoint_dir, smaller.batch_size, smaller.gradient_accumulation)
        return dataclasses.replace(request, params=smaller)

    def _signal(self, vp: ValidationPoint) -> float | None:
        """The intermediate value of a validation point: study.prune_on, higher is better."""
        return vp.label_logprob if self.config.study.prune_on == "label_logprob" else vp.accuracy

    def _on_validation(self, job: Job, vp: ValidationPoint) -> bool:
        """Report a validation point; True when the pruner says stop."""
        value = self._signal(vp)
        if self.multi_objective or value is None:
            return False  # Optuna neither takes intermediate values nor prunes multi-objective studies
        job.reporter.report(vp.point, value)
        return not self.rungs and job.reporter.should_prune()

    # -- outcomes --------------------------------------------------------------------
    def _failed(self, tag: str, e: BaseException, oom_retries: list[dict[str, Any]]) -> TrialOutcome:
        message = f"{type(e).__name__}: {e}"[:2000]
        log.error("%s failed: %s", tag, message)
        return TrialOutcome(Outcome.FAILED, TrialRecord(error=message, oom_retries=oom_retries or None))

    def _outcome(self, job: Job, tag: str, request: TrialRequest, res: TrialResult) -> TrialOutcome:
        record = self._result_record(request, res, job.rung)
        if not self.multi_objective:
            # Points reported by an earlier attempt are on that attempt's trial; report the
            # whole curve here (the ledger skips the steps it has), so this trial's
            # learning curve is complete.
            for vp in res.validation_curve:
                value = self._signal(vp)
                if value is not None:
                    job.reporter.report(vp.point, value)
        if res.paused_at_step is not None:
            log.info(
                "%s paused at step %d/%d, %s %s",
                tag,
                res.optimizer_steps,
                res.max_steps,
                self.config.study.prune_on,
                _fmt(self._signal(res.validation_curve[-1])) if res.validation_curve else "-",
            )
            return TrialOutcome(Outcome.PAUSED, record)
        if res.pruned_at is not None:
            log.info(
                "%s pruned at validation point %d (validation accuracy %s)",
                tag,
                res.pruned_at,
                pct(res.validation_curve[-1].accuracy) if res.validation_curve else "-",
            )
            return TrialOutcome(Outcome.PRUNED, record)
        values = [
            record.objective_value(name, self.config.eval.objective_split) for name in self.config.study.objectives
        ]
        t = res.test.scores if res.test else None
        log.info(
            "%s done: test overall %s (%s), %d parse failures, %d labels outside their field's set, %.1f min",
            tag,
            pct(t.overall if t else None),
            ", ".join(f"{f} {pct(a)}" for f, a in (t.accuracy.items() if t else [])),
            t.parse_failures if t else 0,
            sum(t.invalid_labels.values()) if t else 0,
            (record.minutes or 0),
        )
        predictions = {
            name: [p.to_record() for p in e.predictions]
            for name, e in (("predictions", res.test), ("validation-predictions", res.validation))
            if e is not None
        }
        return TrialOutcome(Outcome.COMPLETE, record, values=values, predictions=predictions)  # type: ignore[arg-type]

    def _result_record(self, request: TrialRequest, res: TrialResult, rung: int | None) -> TrialRecord:
        p = request.params
        gpus = self.config.train.gpus_per_trial
        test_seconds = res.test.seconds if res.test else None
        rung_values: dict[str, float] | None = None
        if self.rungs:
            # A rung's score: after its cool-down branch (warmup_stable_decay), else as measured.
            at = {vp.step: self._signal(vp) for vp in [*res.validation_curve, *res.cooldown_curve]}
            rung_values = {
                str(r): value
                for r, f in enumerate(self.rungs)
                if (value := at.get(stop_step(res.max_steps, f))) is not None
            }
        reached = max((int(r) for r in rung_values), default=None) if rung_values else None
        rung_examples = self._rung_examples(res, reached)
        if not res.trainable_params:  # a result read back from a checkpoint: only its curve and steps
            return TrialRecord(
                validation_curve=[vp.to_record() for vp in res.validation_curve],
                rung=reached,
                rung_values=rung_values,
                cooldown_curve=[vp.to_record() for vp in res.cooldown_curve] or None,
                rung_examples=rung_examples,
                optimizer_steps=res.optimizer_steps,
                max_steps=res.max_steps,
                validation_accuracy_curve=[[vp.point, vp.accuracy] for vp in res.validation_curve],
            )
        return TrialRecord(
            test=res.test.scores if res.test else None,
            validation=res.validation.scores if res.validation else None,
            trainable_params=res.trainable_params,
            train_loss_per_epoch=res.train_loss_per_epoch,
            eval_loss_per_epoch=res.eval_loss_per_epoch,
            validation_accuracy_curve=[[vp.point, vp.accuracy] for vp in res.validation_curve],
            validation_curve=[vp.to_record() for vp in res.validation_curve],
            rung=reached,
            rung_values=rung_values,
            cooldown_curve=[vp.to_record() for vp in res.cooldown_curve] or None,
            rung_examples=rung_examples,
            train_seconds=round(res.train_seconds, 2),
            eval_seconds=round(test_seconds, 2) if test_seconds is not None else None,
            eval_examples_per_second=round(res.test.scores.n / max(res.test.seconds, 1e-9), 3) if res.test else None,
            peak_memory_mb=round(res.peak_memory_mb, 1),
            peak_memory_kind=res.peak_memory_kind,
            resumed_from_step=res.resumed_from_step,
            optimizer_steps=res.optimizer_steps,
            max_steps=res.max_steps,
            compute_dtype=res.compute_dtype,
            environment={**res.environment, "optuna": version("optuna")},
            batch_size=p.batch_size,
            gradient_accumulation=p.gradient_accumulation // gpus if gpus > 1 else p.gradient_accumulation,
            gpus_per_trial=gpus,
            pruned_at_step=res.pruned_at,
            adapter_dir=str(Path(res.adapter_dir).resolve()) if res.adapter_dir else None,
            adapter_sha256=adapter_digest(Path(res.adapter_dir)) if res.adapter_dir else None,
            tracking=_tracking(self.config, request) or None,
            eval_batch_size=res.eval_batch_size,
        )

    def _rung_examples(self, res: TrialResult, reached: int | None) -> dict[str, list[float]] | None:
        """A paused configuration's per-example prune_on metric at its rung (after the
        cool-down branch where there was one), or a finished one's at the last rung (the
        evidence adaptive promotion judges the earlier rung by), measured in this call;
        None otherwise."""
        if reached is None:
            return None
        if res.paused_at_step is None:
            final = res.validation if reached == len(self.rungs) - 1 else None
            values = final.per_example(self.config.study.prune_on) if final else None
            return {str(reached): [round(v, 6) for v in values]} if values else None
        cooled = [vp.evaluation for vp in res.cooldown_curve if vp.step == res.paused_at_step and vp.evaluation]
        evaluation = cooled[0] if cooled else (res.validation if not self.config.study.cooldown else None)
        values = evaluation.per_example(self.config.study.prune_on) if evaluation else None
        return {str(reached): [round(v, 6) for v in values]} if values else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _tracking(config: Config, request: TrialRequest) -> dict[str, str]:
    out = {}
    for t in config.train.report_to:
        out[t] = str(request.checkpoint_dir / "tensorboard") if t == "tensorboard" else str(request.run_name)
    return out
