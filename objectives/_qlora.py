"""The QLoRA causal-LM objective: train one configuration, evaluate it.

Base model in 4-bit NF4 (bitsandbytes, double quantization), fresh peft LoRA adapters,
transformers' Trainer (checkpoints, fp16/bf16, gradient accumulation, callbacks),
validation accuracy at every validation point (what pruners see), then the final
evaluation on the study's fixed test subset. Implements :class:`Objective`.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from optuna_search.core import Config
from optuna_search.objectives._evaluate import evaluate
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
    OutOfMemory,
    Stopped,
    TrialHooks,
    TrialRequest,
    TrialResult,
)
from optuna_search.objectives._train import (
    Collator,
    ValidationState,
    build_training_args,
    is_out_of_memory,
    losses_per_epoch,
    make_callback,
    make_study_trainer,
    validation_curve,
)
from optuna_search.storage._checkpoints import (
    COMPLETE_MARKER,
    FINAL_ADAPTER,
    last_complete_checkpoint,
)


@dataclass
class _Runtime:
    """Where this process trains: device, and its rank under torchrun (DDP)."""

    cuda: bool
    distributed: bool
    is_main: bool

    @classmethod
    def detect(cls) -> "_Runtime":
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


class QLoRAObjective:
    """``Objective`` for a causal LM fine-tuned with QLoRA on the study's config."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult | None:
        """Train (resuming from the point's last checkpoint if there is one) and evaluate.
        Returns None on the non-main ranks of a DDP trial."""
        from transformers import set_seed

        cfg, params = self.config, request.params
        source = model_source(cfg.model)
        tokenizer = load_tokenizer(source, cfg.model)
        encoder = PromptEncoder(tokenizer, request.data.fields, request.data.vocab, cfg.model.max_length)
        rt = _Runtime.detect()
        model = trainer = None
        try:
            t0 = time.monotonic()
            # Seed before the adapters are initialised: a point's result must not depend
            # on which trials ran before it in this process.
            set_seed(cfg.train.seed)
            model, dtype = load_lora_model(source, cfg.model, params, cfg.train.gradient_checkpointing)
            trainable = count_trainable(model)
            hooks.progress(f"loaded base model, {trainable:,} trainable LoRA parameters (r={params.lora_r}, alpha={params.lora_alpha:g})")

            def validate(m) -> Evaluation:
                return evaluate(m, tokenizer, encoder, request.validation_examples,
                                method=cfg.eval.method, batch_size=cfg.eval.batch_size)

            validation = ValidationState()
            trainer, callback = self._trainer(request, hooks, model, tokenizer, encoder, rt, dtype, validation,
                                              validate if rt.is_main else None)
            resumed_from = self._train(trainer, request.checkpoint_dir, hooks)
            if callback.stopped_on_request:
                raise Stopped(f"stopped at step {trainer.state.global_step}/{trainer.state.max_steps}")
            if callback.stopped_for_budget:
                raise BudgetExhausted(f"stopped at step {trainer.state.global_step}/{trainer.state.max_steps}")
            if validation.pruned_at is None:
                self._finish_validation(trainer, validation, validate if rt.is_main else None, model)
            train_seconds = time.monotonic() - t0
            if not rt.is_main:
                return None
            test = None
            if validation.pruned_at is None:
                hooks.progress(f"evaluating on {len(request.test_examples)} fixed test examples ({cfg.eval.method})")
                test = evaluate(model, tokenizer, encoder, request.test_examples, method=cfg.eval.method, batch_size=cfg.eval.batch_size)
                model.save_pretrained(str(request.checkpoint_dir / FINAL_ADAPTER))
            train_loss, eval_loss = losses_per_epoch(trainer.state.log_history)
            peak, kind = rt.peak_memory()
            return TrialResult(
                test=test, validation=validation.last, train_loss_per_epoch=train_loss, eval_loss_per_epoch=eval_loss,
                validation_curve=validation_curve(trainer.state.log_history), trainable_params=trainable,
                train_seconds=train_seconds, peak_memory_mb=peak, peak_memory_kind=kind,
                optimizer_steps=trainer.state.global_step, resumed_from_step=resumed_from,
                compute_dtype=str(dtype).replace("torch.", ""), pruned_at=validation.pruned_at,
                environment=environment_fingerprint(),
            )
        finally:
            # Several trials run in one process: release the model before the next one loads.
            del trainer, model
            gc.collect()
            if rt.cuda:
                import torch

                torch.cuda.empty_cache()

    def _trainer(self, request: TrialRequest, hooks: TrialHooks, model, tokenizer, encoder: PromptEncoder,
                 rt: _Runtime, dtype, validation: ValidationState, validate):
        from transformers import PrinterCallback

        cfg = self.config
        request.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        args = build_training_args(str(request.checkpoint_dir), request.params, cfg.train, cuda=rt.cuda, dtype=dtype,
                                   distributed=rt.distributed)
        callback = make_callback(validation, cfg.train.validations_per_epoch, hooks.progress, request.deadline,
                                 hooks.stop_requested)
        trainer = make_study_trainer(
            validate=validate, on_validation=hooks.on_validation, validation=validation,
            model=model, args=args, train_dataset=encoder.to_hf_dataset(request.data.train.examples),
            # Validation loss on the same fixed subset as validation accuracy: comparable
            # across trials, and bounded in cost.
            eval_dataset=encoder.to_hf_dataset(request.validation_examples or request.data.validation.examples),
            data_collator=Collator(tokenizer), callbacks=[callback],
        )
        # Our callback logs progress to stderr; Trainer's printer would dump dicts to stdout.
        trainer.remove_callback(PrinterCallback)
        return trainer, callback

    @staticmethod
    def _finish_validation(trainer, validation: ValidationState, validate, model) -> None:
        """Make sure the end of training was validated: a trial resumed from a checkpoint
        written at the last step (killed during the test evaluation) has the loss record
        but not the predictions in memory; one resumed from before the last validation
        has neither."""
        end = trainer.state.max_steps
        if not any("eval_loss" in r and r.get("step") == end for r in trainer.state.log_history):
            trainer.evaluate()  # every rank: the loss is computed data-parallel
        if validate is not None and validation.last_step != end:
            validation.last, validation.last_step = validate(model), end

    @staticmethod
    def _train(trainer, checkpoint_dir: Path, hooks: TrialHooks) -> int:
        """Train from the last complete checkpoint, if any; returns the step resumed from."""
        last, broken = last_complete_checkpoint(checkpoint_dir)
        for p in broken:
            # Unusable, and in the way: Trainer would pick the highest step again.
            hooks.progress(f"removing {p}: its write was interrupted (no {COMPLETE_MARKER})")
            shutil.rmtree(p, ignore_errors=True)
        resumed_from = int(last.name.split("-")[-1]) if last else 0
        if last:
            hooks.progress(f"resuming from checkpoint {last} (step {resumed_from})")
            last = str(last)
        try:
            trainer.train(resume_from_checkpoint=last)
        except Exception as e:
            if is_out_of_memory(e):
                raise OutOfMemory(str(e)) from e
            raise
        return resumed_from

