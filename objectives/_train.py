"""Training with transformers' Trainer: arguments, validation points, progress, the
session deadline, and the curves read back from Trainer's log history.

Validation points: ``train.validations_per_epoch`` evenly spaced points per epoch, the
last at the epoch's end. At each, Trainer computes the validation loss and
:class:`StudyTrainer` the overall validation accuracy on the study's fixed validation
subset; the accuracy is logged into Trainer's history (saved in every checkpoint, so the
curve survives a resume) and passed to ``on_validation``, which may stop the trial
(pruning). A checkpoint due at a validation point is written after its validation, so a
resume never misses one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from optuna_search.core import TrialParams
from optuna_search.core._text import format_seconds
from optuna_search.objectives._metrics import Evaluation

# Seconds between progress lines during training (OPTUNA_SEARCH_PROGRESS_INTERVAL=0: every step).
PROGRESS_INTERVAL_S = float(os.environ.get("OPTUNA_SEARCH_PROGRESS_INTERVAL", "10"))
VALIDATION_KEY = "validation_accuracy"


def at_epoch_end(epoch: float | None) -> bool:
    """Trainer's fractional epoch counter sits on a whole number only at an epoch's end."""
    return epoch is not None and abs(epoch - round(epoch)) < 1e-6


def losses_per_epoch(log_history: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean training loss and the epoch-end validation loss of each epoch, from
    Trainer's log history (saved in every checkpoint, so the curves survive a resume)."""
    train: dict[int, list[float]] = {}
    evals: dict[int, float] = {}
    for rec in log_history:
        epoch = rec.get("epoch")
        if epoch is None:
            continue
        # A step logged at epoch 1.0 belongs to epoch 1 (index 0): ceil(epoch) - 1.
        idx = max(0, math.ceil(round(epoch, 6)) - 1)
        if "loss" in rec:
            train.setdefault(idx, []).append(float(rec["loss"]))
        if "eval_loss" in rec and at_epoch_end(epoch):
            evals[idx] = float(rec["eval_loss"])
    return [sum(v) / len(v) for _, v in sorted(train.items())], [v for _, v in sorted(evals.items())]


def validation_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(validation point, overall validation accuracy) pairs from the log history."""
    curve = {int(r["validation_point"]): float(r[VALIDATION_KEY]) for r in log_history if VALIDATION_KEY in r}
    return sorted(curve.items())


def validation_steps(max_steps: int, epochs: int, per_epoch: int) -> list[int]:
    """Optimizer steps after which validation runs: ``per_epoch`` evenly spaced points
    per epoch, the last at the epoch's end."""
    steps_per_epoch = max_steps / epochs
    return sorted({max(1, round(steps_per_epoch * (e + k / per_epoch))) for e in range(epochs) for k in range(1, per_epoch + 1)})


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


@dataclass
class ValidationState:
    """Shared by the callback (which schedules validation) and the trainer (which runs it)."""

    steps: list[int] = field(default_factory=list)
    last: Evaluation | None = None
    last_step: int = -1
    pruned_at: int | None = None

    def point_of(self, step: int) -> int:
        return self.steps.index(step) + 1 if step in self.steps else len([s for s in self.steps if s <= step])


def build_training_args(output_dir: str, params: TrialParams, train_cfg: Any, *, cuda: bool, dtype: Any, distributed: bool):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation,
        num_train_epochs=params.epochs,
        learning_rate=params.learning_rate,
        lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        fp16=cuda and dtype == torch.float16,
        bf16=cuda and dtype == torch.bfloat16,
        use_cpu=not cuda,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="no",  # validation points are scheduled by StudyCallback
        save_strategy="steps",
        save_steps=train_cfg.checkpoint_steps,
        save_total_limit=2,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Every LoRA parameter gets a gradient; the frozen 4-bit base needs no search.
        ddp_find_unused_parameters=False if distributed else None,
    )


def make_study_trainer(
    *,
    validate: Callable[[Any], Evaluation] | None,
    on_validation: Callable[[int, float], bool],
    validation: ValidationState,
    **trainer_kwargs: Any,
):
    """A transformers ``Trainer`` that, at each validation point, also measures the
    validation accuracy (``validate(model)``, main process only) and may stop there."""
    from transformers import Trainer

    class StudyTrainer(Trainer):
        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            metrics = super().evaluate(*args, **kwargs)
            step = self.state.global_step
            if validate is None or step not in validation.steps:
                return metrics
            evaluation = validate(self.model)
            self.model.train()
            point = validation.point_of(step)
            validation.last, validation.last_step = evaluation, step
            self.log({VALIDATION_KEY: evaluation.scores.overall, "validation_point": point})
            if on_validation(point, evaluation.scores.overall):
                validation.pruned_at = point
                self.control.should_training_stop = True
            return metrics

    return StudyTrainer(**trainer_kwargs)


def make_callback(validation: ValidationState, validations_per_epoch: int, progress: Callable[[str], None], deadline: float | None,
                  stop_requested: Callable[[], bool]):
    from transformers import TrainerCallback

    class StudyCallback(TrainerCallback):
        """Schedules validation points, logs progress with an ETA, and stops at a
        checkpoint before the session's deadline or when the process is asked to stop."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.first_step: int | None = None
            self.last_log = 0.0
            self.step_seconds = 0.0
            self.stopped_for_budget = False
            self.stopped_on_request = False

        def on_train_begin(self, args, state, control, **kw):
            validation.steps = validation_steps(state.max_steps, int(args.num_train_epochs), validations_per_epoch)

        def on_step_end(self, args, state, control, **kw):
            if self.first_step is None:
                self.first_step = state.global_step - 1
            now = time.monotonic()
            done = state.global_step - self.first_step
            self.step_seconds = (now - self.t0) / max(done, 1)
            if state.global_step in validation.steps:
                control.should_evaluate = True
            running = state.global_step < state.max_steps
            if running and stop_requested():
                # SIGTERM: Trainer writes the checkpoint right after this step, then stops.
                self.stopped_on_request = True
                self._checkpoint_and_stop(control, f"stop requested: checkpointing at step {state.global_step}/{state.max_steps}")
                return
            # Stop while there is still time for a few more steps' worth of work (the
            # checkpoint write): the next session resumes from exactly this step.
            if running and deadline is not None and now + max(5.0, 3 * self.step_seconds) >= deadline:
                self.stopped_for_budget = True
                self._checkpoint_and_stop(control, f"time budget reached at step {state.global_step}/{state.max_steps}: checkpointing")
                return
            if now - self.last_log >= PROGRESS_INTERVAL_S or state.global_step >= state.max_steps:
                self.last_log = now
                progress(self._progress_line(args, state, done, now))

        @staticmethod
        def _checkpoint_and_stop(control, message: str) -> None:
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False
            progress(message + " and stopping")

        def _progress_line(self, args, state, done: int, now: float) -> str:
            rate = done / max(now - self.t0, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
            loss = next((r["loss"] for r in reversed(state.log_history) if "loss" in r), None)
            return (
                f"epoch {state.epoch:.2f}/{args.num_train_epochs:g} step {state.global_step}/{state.max_steps}"
                + (f" loss {loss:.4f}" if loss is not None else "")
                + f" ETA {format_seconds(eta)}"
            )

    return StudyCallback()


class Collator:
    """Dynamic padding (pad to the longest in the batch), dropping the length column
    that only the length-grouped sampler needs."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def __call__(self, features):
        return self.inner([{k: v for k, v in f.items() if k != "length"} for f in features])
