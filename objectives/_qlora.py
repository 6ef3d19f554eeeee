"""The QLoRA causal-LM objective: train one configuration, evaluate it.

Base model in 4-bit NF4 (bitsandbytes, double quantization), fresh peft LoRA adapters,
transformers' Trainer (checkpoints, fp16/bf16, gradient accumulation, callbacks),
validation at every validation point (what pruners and successive halving see), then
the final evaluation on the study's fixed test subset. Implements :class:`Objective`;
read top to bottom: load, train (resuming), stop where asked, evaluate, save, result.

Running out of accelerator memory raises :class:`OutOfMemory` with the phase it happened
in, created after this attempt's model and trainer are released and collected: the
runner's retry loads its model into free memory, never beside the first one.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_search.core import METRICS, Config
from optuna_search.objectives._evaluate import Evaluator
from optuna_search.objectives._memory import freeze_what_lives_on, oom_phase, release_memory
from optuna_search.objectives._metrics import Evaluation
from optuna_search.objectives._model import (
    count_trainable,
    environment_fingerprint,
    load_lora_model,
    load_tokenizer,
    model_source,
)
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._protocol import (
    BudgetExhausted,
    DivergedTraining,
    OutOfMemory,
    Stopped,
    TrialHooks,
    TrialRequest,
    TrialResult,
    ValidationPoint,
)
from optuna_search.objectives._train import (
    Collator,
    ValidationRun,
    build_training_args,
    cooldown_steps,
    log_entry,
    losses_per_epoch,
    stop_step,
    validation_curve,
)
from optuna_search.storage import (
    COMPLETE_MARKER,
    FINAL_ADAPTER,
    add_to_history,
    checkpoint_state,
    last_complete_checkpoint,
    resume_point,
)

if TYPE_CHECKING:
    from optuna_search.objectives._trainer import Branch

COOLDOWN_DIR = "cooldown"
"""Where a rung's cool-down branch trains (inside the point's folder; removed after)."""


@dataclass
class _Runtime:
    """Where this process trains: device, and its rank under torchrun (DDP)."""

    cuda: bool
    distributed: bool
    is_main: bool

    @classmethod
    def detect(cls) -> _Runtime:
        import torch

        cuda = torch.cuda.is_available()
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if cuda and distributed:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        return cls(cuda, distributed, int(os.environ.get("RANK", "0")) == 0)

    def peak_memory(self) -> tuple[float, str]:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


@dataclass
class _Trial:
    """One attempt's live objects, dropped together when it ends."""

    model: Any
    dtype: Any
    trainer: Any
    callback: Any
    run: ValidationRun
    evaluator: Evaluator
    cooldown: ValidationPoint | None = None
    """The rung's score after its cool-down branch, measured in this call."""


class QLoRAObjective:
    """``Objective`` for a causal LM fine-tuned with QLoRA on the study's config.

    Under torchrun (``DistributedObjective``) every rank calls it; the ranks other than
    the first train their share and return a result without evaluations."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult:
        """Train (resuming from the point's last checkpoint if there is one) and evaluate."""
        oom: OutOfMemory | None = None
        freeze_what_lives_on()
        try:
            return self._run(request, hooks)
        except OutOfMemory as e:
            # A fresh exception: the caught one's traceback holds this attempt's frames,
            # and through them its model and trainer.
            oom = OutOfMemory(str(e), e.phase)
        finally:
            # Several trials run in one process: release the model before the next loads.
            release_memory()
        raise oom

    def _run(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult:
        cfg = self.config
        source = model_source(cfg.model)
        tokenizer = load_tokenizer(source, cfg.model)
        encoder = PromptEncoder(tokenizer, request.data.fields, request.data.vocab, cfg.model.max_length)
        rt = _Runtime.detect()
        t0 = time.monotonic()
        last, resumed_from = self._last_checkpoint(request.checkpoint_dir, hooks)
        paused = self._already_there(last, request.train_until)
        if paused is not None and not self._cools_down(request, paused):
            return paused  # a run killed after it paused at this rung: nothing to train
        trial = self._start(request, hooks, source, tokenizer, encoder, rt)
        if paused is None:
            with oom_phase("train"):
                trial.trainer.train(resume_from_checkpoint=str(last) if last else None)
            self._raise_if_stopped(trial.trainer, trial.callback)
        if paused is not None or (trial.callback.paused and self._cools_down(request, None)):
            # A rung: scored after a cool-down branch from the checkpoint just written (or
            # found: killed during its branch).
            self._cool_down(request, hooks, trial, encoder, rt)
            if paused is not None:
                return self._already_there(last, request.train_until) or paused
        test, adapter = self._finish(request, hooks, trial, tokenizer, rt)
        return self._result(request, trial, test, adapter, rt, t0, resumed_from)

    def _cools_down(self, request: TrialRequest, paused: TrialResult | None) -> bool:
        """A successive-halving rung is scored after a cool-down branch (study.cooldown),
        once: a paused result read back from its checkpoint has it when its score is there."""
        if not self.config.study.cooldown or request.train_until >= 1.0:
            return False
        return paused is None or not any(vp.step == paused.optimizer_steps for vp in paused.cooldown_curve)

    def _cool_down(
        self, request: TrialRequest, hooks: TrialHooks, trial: _Trial, encoder: PromptEncoder, rt: _Runtime
    ) -> None:
        """Train a cool-down branch from the stable-phase checkpoint (the learning rate falls
        to 0 over ``cooldown_steps``), validate it, append that score to the checkpoint's
        history (the rung's score; a promoted configuration resumes from the same
        checkpoint, on the stable schedule) and discard the branch."""
        from optuna_search.objectives._trainer import Branch

        checkpoint, _ = last_complete_checkpoint(request.checkpoint_dir)
        assert checkpoint is not None  # a paused run has just written it, or was read from it
        state = checkpoint_state(checkpoint)
        start, main_steps = state["global_step"], state["max_steps"]
        branch = Branch(start, cooldown_steps(start, self.config.train.decay_ratio), main_steps)
        hooks.progress(
            f"cool-down branch: {branch.length} steps from step {start} with the learning rate falling to 0, "
            "then validation (the rung's score; the branch is discarded)"
        )
        folder = request.checkpoint_dir / COOLDOWN_DIR
        shutil.rmtree(folder, ignore_errors=True)
        # The run's optimizer state is in the checkpoint the branch loads: not twice in memory.
        trial.trainer.optimizer = trial.trainer.lr_scheduler = None
        run = ValidationRun(None, lambda vp: False, branch=True)
        trainer, callback = self._trainer(
            request,
            hooks,
            trial.model,
            trial.evaluator.tokenizer,
            encoder,
            rt,
            trial.dtype,
            run,
            trial.evaluator.batch_size,
            branch=branch,
            output_dir=folder,
        )
        with oom_phase("train"):
            trainer.train(resume_from_checkpoint=str(checkpoint))
        self._raise_if_stopped(trainer, callback)
        if rt.is_main:
            self._score_branch(request, hooks, trial, checkpoint, branch)
        shutil.rmtree(folder, ignore_errors=True)

    def _score_branch(
        self, request: TrialRequest, hooks: TrialHooks, trial: _Trial, checkpoint: Path, branch: Branch
    ) -> None:
        """Validate the cooled-down model: the rung's score, appended to the checkpoint's
        history (and the live trainer's), where a resumed run reads it back."""
        start, main_steps = branch.start, branch.main_steps
        evaluation = trial.evaluator(trial.model, request.validation_examples)
        if not trial.run.steps:
            trial.run.plan(main_steps, request.params.epochs, self.config.train.validations_per_epoch)
        s = evaluation.scores
        vp = ValidationPoint(
            trial.run.point_of(start),
            start,
            start / main_steps,
            s.overall,
            s.label_logprob,
            evaluation,
            cooldown_steps=branch.length,
        )
        hooks.progress(
            f"after the cool-down: validation accuracy {100 * s.overall:.1f}%"
            + (f", label log-prob {s.label_logprob:.4f}" if s.label_logprob is not None else "")
        )
        add_to_history(checkpoint, log_entry(vp))
        trial.trainer.state.log_history.append(log_entry(vp))
        trial.cooldown = vp
        hooks.on_checkpoint()

    def _start(
        self, request: TrialRequest, hooks: TrialHooks, source: str, tokenizer, encoder: PromptEncoder, rt: _Runtime
    ) -> _Trial:
        """The quantized base with fresh adapters, the evaluator, the trainer."""
        from transformers import set_seed

        cfg, params = self.config, request.params
        # Seed before the adapters are initialised: a point's result must not depend
        # on which trials ran before it in this process.
        set_seed(cfg.train.seed)
        with oom_phase("load"):
            model, dtype = load_lora_model(source, cfg.model, params, cfg.train.gradient_checkpointing)
        hooks.progress(
            f"loaded base model, {count_trainable(model):,} trainable LoRA parameters (r={params.lora_r}, "
            f"alpha={params.lora_alpha:g}{', DoRA' if params.use_dora else ''}"
            f"{', rsLoRA' if params.use_rslora else ''})"
        )
        evaluator = Evaluator(
            tokenizer, encoder, cfg.eval.method, request.eval_batch_size or cfg.eval.batch_size, dtype
        )

        def validate(m) -> Evaluation:
            return evaluator(m, request.validation_examples)

        run = ValidationRun(
            validate if rt.is_main else None, hooks.on_validation, request.validate_at, request.train_until
        )
        trainer, callback = self._trainer(
            request, hooks, model, tokenizer, encoder, rt, dtype, run, evaluator.batch_size
        )
        return _Trial(model, dtype, trainer, callback, run, evaluator)

    @staticmethod
    def _raise_if_stopped(trainer, callback) -> None:
        step, max_steps = trainer.state.global_step, trainer.state.max_steps
        if callback.diverged:
            raise DivergedTraining(callback.diverged + "; lower the learning rate")
        if callback.stopped_on_request:
            raise Stopped(f"stopped at step {step}/{max_steps}")
        if callback.stopped_for_budget:
            raise BudgetExhausted(f"stopped at step {step}/{max_steps}")

    def _finish(
        self, request: TrialRequest, hooks: TrialHooks, trial: _Trial, tokenizer, rt: _Runtime
    ) -> tuple[Evaluation | None, Path | None]:
        """Validation at the end of training, the test evaluation and the saved adapter
        (a trial trained to its end on the main process; None, None otherwise)."""
        run, cfg = trial.run, self.config
        if run.pruned_at is not None or trial.callback.paused:
            return None, None
        self._finish_validation(trial.trainer, run, trial.model)
        if not rt.is_main:
            return None, None
        hooks.progress(f"evaluating on {len(request.test_examples)} fixed test examples ({cfg.eval.method})")
        test = trial.evaluator(trial.model, request.test_examples)
        adapter = request.checkpoint_dir / FINAL_ADAPTER
        # No hub lookup at save time: the embeddings are never trained here (peft's "auto"
        # asks the hub about the base model's vocabulary on every save of a hub id).
        trial.model.save_pretrained(str(adapter), save_embedding_layers=False)
        tokenizer.save_pretrained(str(adapter))
        _log_final_metrics(trial.trainer, test, run.last)
        return test, adapter

    def _result(
        self,
        request: TrialRequest,
        trial: _Trial,
        test: Evaluation | None,
        adapter: Path | None,
        rt: _Runtime,
        t0: float,
        resumed_from: int,
    ) -> TrialResult:
        state = trial.trainer.state
        train_loss, eval_loss = losses_per_epoch(state.log_history)
        peak, kind = rt.peak_memory()
        return TrialResult(
            test=test,
            validation=trial.run.last,
            train_loss_per_epoch=train_loss,
            eval_loss_per_epoch=eval_loss,
            validation_curve=validation_curve(state.log_history, state.max_steps),
            cooldown_curve=[
                trial.cooldown if trial.cooldown and vp.step == trial.cooldown.step else vp
                for vp in validation_curve(state.log_history, state.max_steps, cooldown=True)
            ],
            trainable_params=count_trainable(trial.model),
            train_seconds=time.monotonic() - t0 - (test.seconds if test else 0.0),
            peak_memory_mb=peak,
            peak_memory_kind=kind,
            optimizer_steps=state.global_step,
            max_steps=state.max_steps,
            resumed_from_step=resumed_from,
            compute_dtype=str(trial.dtype).replace("torch.", ""),
            pruned_at=trial.run.pruned_at,
            paused_at_step=state.global_step if trial.callback.paused else None,
            adapter_dir=str(adapter) if adapter else None,
            environment=environment_fingerprint(),
            eval_batch_size=trial.evaluator.batch_size,
        )

    def _trainer(
        self,
        request: TrialRequest,
        hooks: TrialHooks,
        model,
        tokenizer,
        encoder: PromptEncoder,
        rt: _Runtime,
        dtype,
        run: ValidationRun,
        eval_batch_size: int,
        branch: Any = None,
        output_dir: Path | None = None,
    ):
        """Trainer and its callback for the point's run, or (``branch``) for a cool-down
        branch in ``output_dir``: trained to its end, saving nothing, not validated."""
        from transformers import PrinterCallback

        from optuna_search.objectives._trainer import StudyTrainer

        cfg = self.config
        folder = output_dir or request.checkpoint_dir
        folder.mkdir(parents=True, exist_ok=True)
        args = build_training_args(
            str(folder),
            request.params,
            cfg.train,
            cuda=rt.cuda,
            dtype=dtype,
            distributed=rt.distributed,
            run_name=request.run_name,
            eval_batch_size=eval_batch_size,
            max_steps=branch.start + branch.length if branch else -1,
            save=branch is None,
        )
        callbacks = self._callbacks(request, hooks, run, rt, branch)
        trainer = StudyTrainer(
            validation=run,
            decay_ratio=cfg.train.decay_ratio,
            branch=branch,
            model=model,
            args=args,
            train_dataset=encoder.to_hf_dataset(request.data.train.examples),
            # Validation loss on the same fixed subset as validation accuracy: comparable
            # across trials, and bounded in cost.
            eval_dataset=encoder.to_hf_dataset(request.validation_examples or request.data.validation.examples),
            data_collator=Collator(tokenizer),
            callbacks=callbacks,
        )
        # Our callback logs progress to stderr; Trainer's printer would dump dicts to stdout.
        trainer.remove_callback(PrinterCallback)
        return trainer, callbacks[0]

    def _callbacks(self, request: TrialRequest, hooks: TrialHooks, run: ValidationRun, rt: _Runtime, branch: Any):
        """The study's callback (first) and the trackers' (TensorBoard: the run's only)."""
        from optuna_search.objectives._trainer import StudyCallback, tensorboard_callback

        cfg = self.config
        callbacks: list[Any] = [
            StudyCallback(
                run,
                cfg.train.validations_per_epoch,
                (lambda line: hooks.progress(f"cool-down: {line}")) if branch else hooks.progress,
                request.deadline,
                hooks.stop_requested,
                hooks.progress_interval,
                None if branch else hooks.on_checkpoint,
                save_on_stop=branch is None,
            )
        ]
        if "tensorboard" in cfg.train.report_to and rt.is_main and branch is None:
            callbacks.append(tensorboard_callback(str(request.checkpoint_dir / "tensorboard")))
        return callbacks

    @staticmethod
    def _finish_validation(trainer, run: ValidationRun, model) -> None:
        """Make sure the end of training was validated: a trial resumed from a checkpoint
        written at the last step (killed during the test evaluation) has the loss record
        but not the predictions in memory; one resumed from before the last validation
        has neither."""
        end = trainer.state.max_steps
        if not any("eval_loss" in r and r.get("step") == end for r in trainer.state.log_history):
            trainer.evaluate()  # every rank: the loss is computed data-parallel
        if run.validate is not None and run.last_step != end:
            run.last, run.last_step = run.validate(model), end

    @staticmethod
    def _last_checkpoint(folder: Path, hooks: TrialHooks) -> tuple[Path | None, int]:
        """The last complete checkpoint of the point and its step."""
        last, step, broken = resume_point(folder)
        for p in broken:
            hooks.progress(f"removed {p}: its write was interrupted (no {COMPLETE_MARKER})")
        if last:
            hooks.progress(f"resuming from checkpoint {last} (step {step})")
        return last, step

    @staticmethod
    def _already_there(last: Path | None, train_until: float) -> TrialResult | None:
        """A configuration that already paused at (or past) the requested rung, then was
        killed before the study recorded it: its result is in the checkpoint."""
        if last is None or train_until >= 1.0:
            return None
        state = checkpoint_state(last)
        step, max_steps = state["global_step"], state["max_steps"]
        if step < stop_step(max_steps, train_until):
            return None
        history = state["log_history"]
        train_loss, eval_loss = losses_per_epoch(history)
        return TrialResult(
            test=None,
            validation=None,
            train_loss_per_epoch=train_loss,
            eval_loss_per_epoch=eval_loss,
            validation_curve=validation_curve(history, max_steps),
            cooldown_curve=validation_curve(history, max_steps, cooldown=True),
            trainable_params=0,
            train_seconds=0.0,
            peak_memory_mb=0.0,
            peak_memory_kind="",
            optimizer_steps=step,
            max_steps=max_steps,
            resumed_from_step=step,
            paused_at_step=step,
        )


def _log_final_metrics(trainer, test: Evaluation, validation: Evaluation | None) -> None:
    """The trial's final scores, for the trackers of train.report_to (one run per trial)."""
    if not trainer.args.report_to and not any(
        type(c).__name__ == "TensorBoardCallback" for c in trainer.callback_handler.callbacks
    ):
        return
    metrics = {f"test_{k}": v for k, v in _metrics(test).items()}
    if validation is not None:
        metrics.update({f"validation_{k}": v for k, v in _metrics(validation).items()})
    trainer.log(metrics)


def _metrics(e: Evaluation) -> dict[str, float]:
    s = e.scores
    out = {f"{f}_accuracy": a for f, a in s.accuracy.items()}
    out.update({m.overall: v for m in METRICS if (v := s.overall_of(m.name)) is not None})
    return out
