"""Training with transformers' Trainer, the light half: arguments, validation points, the
stop step, progress lines, and the curves read back from Trainer's log history. The
Trainer and callback classes themselves are in ``_trainer`` (imported only where a trial
trains: it imports transformers).

Validation points: ``train.validations_per_epoch`` evenly spaced points per epoch (the
last at the epoch's end), plus the fractions the request asks for (successive halving's
rungs). At each, Trainer computes the validation loss and :class:`ValidationRun` the
overall validation accuracy and the mean label log-probability on the study's fixed
validation subset; they are logged into Trainer's history (saved in every checkpoint, so
the curve survives a resume) and passed to ``on_validation``, which may stop the trial
(pruning). A checkpoint due at a validation point is written after its validation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna_search.core import format_seconds
from optuna_search.objectives._metrics import Evaluation
from optuna_search.objectives._protocol import ValidationPoint

if TYPE_CHECKING:
    from optuna_search.core import TrialParams

PROGRESS_INTERVAL_S = 10.0
"""Default seconds between progress lines during training."""
ACCURACY_KEY = "validation_accuracy"
LOGPROB_KEY = "validation_label_logprob"
COOLDOWN_KEY = "cooldown_steps"
"""Marks a log entry measured after a rung's cool-down branch (warmup_stable_decay)."""


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


def validation_curve(
    log_history: list[dict[str, Any]], max_steps: int, *, cooldown: bool = False
) -> list[ValidationPoint]:
    """The validation points logged so far (across resumes), in order; ``cooldown``: the
    rungs' scores after their cool-down branches instead."""
    points = {}
    for r in log_history:
        if ACCURACY_KEY in r and bool(r.get(COOLDOWN_KEY)) == cooldown:
            step = int(r.get("validation_step", r.get("step", 0)))
            points[int(r["validation_point"])] = ValidationPoint(
                int(r["validation_point"]),
                step,
                step / max(max_steps, 1),
                float(r[ACCURACY_KEY]),
                r.get(LOGPROB_KEY),
                cooldown_steps=int(r.get(COOLDOWN_KEY, 0)),
            )
    return [points[k] for k in sorted(points)]


def cooldown_steps(step: int, decay_ratio: float) -> int:
    """The length of a rung's cool-down branch from ``step``: the decay of a
    warmup-stable-decay run trained to ``step`` plus the branch (``decay_ratio`` of that
    budget: a quarter of the steps so far at 0.2)."""
    return max(1, round(step * decay_ratio / (1 - decay_ratio)))


def decay_steps(max_steps: int, decay_ratio: float) -> int:
    """Steps in the final decay of a warmup-stable-decay run."""
    return max(1, round(max_steps * decay_ratio))


def validation_steps(max_steps: int, epochs: int, per_epoch: int, fractions: tuple[float, ...] = ()) -> list[int]:
    """Optimizer steps after which validation runs: ``per_epoch`` evenly spaced points
    per epoch (the last at the epoch's end), and the given fractions of training."""
    steps_per_epoch = max_steps / epochs
    steps = {
        max(1, round(steps_per_epoch * (e + k / per_epoch))) for e in range(epochs) for k in range(1, per_epoch + 1)
    }
    return sorted(steps | {stop_step(max_steps, f) for f in fractions})


def stop_step(max_steps: int, fraction: float) -> int:
    """The optimizer step at which a run that trains ``fraction`` of its steps stops."""
    return max_steps if fraction >= 1.0 else min(max_steps, max(1, round(fraction * max_steps)))


@dataclass
class ValidationRun:
    """Validation points of one training run, shared by the callback (which schedules
    them and stops where asked) and the trainer (which measures)."""

    validate: Callable[[Any], Evaluation] | None
    """Scores the model on the validation subset (main process only; None elsewhere)."""
    on_validation: Callable[[ValidationPoint], bool]
    fractions: tuple[float, ...] = ()
    train_until: float = 1.0
    branch: bool = False
    """A cool-down branch: no validation points, trained to its end."""
    steps: list[int] = field(default_factory=list)
    max_steps: int = 0
    stop_at: int = 0
    last: Evaluation | None = None
    last_step: int = -1
    pruned_at: int | None = None

    def plan(self, max_steps: int, epochs: int, per_epoch: int) -> None:
        self.max_steps = max_steps
        self.steps = [] if self.branch else validation_steps(max_steps, epochs, per_epoch, self.fractions)
        self.stop_at = max_steps if self.branch else stop_step(max_steps, self.train_until)

    def point_of(self, step: int) -> int:
        return self.steps.index(step) + 1 if step in self.steps else len([s for s in self.steps if s <= step])

    def measure(self, model: Any, step: int) -> tuple[ValidationPoint, bool] | None:
        """Validate at ``step``; the point and whether the pruner says stop (None off the
        main process)."""
        if self.validate is None:
            return None
        evaluation = self.validate(model)
        self.last, self.last_step = evaluation, step
        vp = ValidationPoint(
            self.point_of(step),
            step,
            step / max(self.max_steps, 1),
            evaluation.scores.overall,
            evaluation.scores.label_logprob,
            evaluation,
        )
        stop = bool(self.on_validation(vp))
        if stop:
            self.pruned_at = vp.point
        return vp, stop


def log_entry(vp: ValidationPoint) -> dict[str, float]:
    """The validation point as Trainer logs it (and saves it in each checkpoint)."""
    out = {ACCURACY_KEY: vp.accuracy, "validation_point": vp.point, "validation_step": vp.step}
    if vp.label_logprob is not None:
        out[LOGPROB_KEY] = vp.label_logprob
    if vp.cooldown_steps:
        out[COOLDOWN_KEY] = vp.cooldown_steps
    return out


def build_training_args(
    output_dir: str,
    params: TrialParams,
    train_cfg: Any,
    *,
    cuda: bool,
    dtype: Any,
    distributed: bool,
    run_name: str | None = None,
    eval_batch_size: int = 8,
    max_steps: int = -1,
    save: bool = True,
):
    import torch
    from transformers import TrainingArguments

    kwargs = params.trainer_kwargs()  # every searchable hyperparameter Trainer takes (see core._params)
    # The validation loss pass: at most the training batch, and smaller once an evaluation
    # ran out of memory.
    kwargs["per_device_eval_batch_size"] = min(kwargs["per_device_eval_batch_size"], eval_batch_size)
    return TrainingArguments(
        output_dir=output_dir,
        **kwargs,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        # Mixed precision at the compute dtype: fp16 on a GPU (a T4), bf16 wherever it is
        # asked for (CPUs run bf16 autocast too; fp32 trains as it is).
        fp16=cuda and dtype == torch.float16,
        bf16=dtype == torch.bfloat16,
        use_cpu=not cuda,
        logging_strategy="steps",
        logging_steps=1,
        # The real loss is logged, nan and inf included: a diverging trial must fail, not
        # be averaged into a finite number (Trainer's default filter).
        logging_nan_inf_filter=False,
        eval_strategy="no",  # validation points are scheduled by StudyCallback
        # A cool-down branch stops at max_steps and saves nothing (it is discarded).
        max_steps=max_steps,
        save_strategy="steps" if save else "no",
        save_steps=train_cfg.checkpoint_steps,
        save_total_limit=2,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,
        # TensorBoard gets its own callback with a folder per point (see _trainer);
        # mlflow and wandb are Trainer's integrations, configured by their environment.
        report_to=[t for t in train_cfg.report_to if t != "tensorboard"],
        run_name=run_name,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Every LoRA parameter gets a gradient; the frozen 4-bit base needs no search.
        ddp_find_unused_parameters=False if distributed else None,
    )


class Progress:
    """Progress lines with an ETA, at most one per ``interval`` seconds."""

    def __init__(self, emit: Callable[[str], None], interval: float = PROGRESS_INTERVAL_S) -> None:
        self.emit, self.interval = emit, interval
        self.t0 = time.monotonic()
        self.first_step: int | None = None
        self.last = 0.0
        self.step_seconds = 0.0

    def step(
        self, global_step: int, max_steps: int, epoch: float, epochs: float, loss: float | None, stop_at: int
    ) -> None:
        if self.first_step is None:
            self.first_step = global_step - 1
        now = time.monotonic()
        done = global_step - self.first_step
        self.step_seconds = (now - self.t0) / max(done, 1)
        if now - self.last < self.interval and global_step < stop_at:
            return
        self.last = now
        eta = (stop_at - global_step) * self.step_seconds
        self.emit(
            f"epoch {epoch:.2f}/{epochs:g} step {global_step}/{max_steps}"
            + (f" loss {loss:.4f}" if loss is not None else "")
            + (f" (pausing at step {stop_at})" if stop_at < max_steps else "")
            + f" ETA {format_seconds(eta)}"
        )


class Collator:
    """Dynamic padding (pad to the longest in the batch), dropping the length column
    that only the length-grouped sampler needs. Training pads on the right, whatever the
    tokenizer's own side (Mistral's pads left, for generation): every position of a row
    then has real tokens before it, and no attention row is all masked (which SDPA
    kernels handle differently)."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.tokenizer = tokenizer
        self.inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def __call__(self, features):
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "right"
        try:
            return self.inner([{k: v for k, v in f.items() if k != "length"} for f in features])
        finally:
            self.tokenizer.padding_side = side
