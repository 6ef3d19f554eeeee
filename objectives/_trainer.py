"""transformers' Trainer with the study's validation points, and the callback that
schedules them, stops where asked and shows progress. This module imports transformers
at the top (its classes subclass Trainer's): only the code that trains imports it,
inside the function that trains, so ``optuna-search --help`` stays light."""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import SchedulerType, Trainer, TrainerCallback

from optuna_search.objectives._memory import oom_phase
from optuna_search.objectives._train import Progress, ValidationRun, decay_steps, log_entry


@dataclass(frozen=True)
class Branch:
    """A cool-down branch: from the checkpoint at ``start``, ``length`` steps whose
    learning rate falls from the run's (at ``start``) to 0 (1-sqrt), of a run of
    ``main_steps`` steps."""

    start: int
    length: int
    main_steps: int


def run_schedule(optimizer, args: Any, main_steps: int, decay_ratio: float):
    """The run's learning-rate schedule over ``main_steps``: transformers' own, its
    warmup-stable-decay with a 1-sqrt decay over ``decay_ratio`` of the run."""
    from transformers.optimization import get_scheduler, get_wsd_schedule

    warmup = args.get_warmup_steps(main_steps)
    if args.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY:
        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=warmup,
            num_decay_steps=decay_steps(main_steps, decay_ratio),
            num_training_steps=main_steps,
            decay_type="1-sqrt",
        )
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup,
        num_training_steps=main_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )


def cool_down(optimizer, run, branch: Branch):
    """The cool-down branch of the schedule ``run`` (a LambdaLR, as all of transformers'
    are): the run's rate up to ``branch.start``, then a 1-sqrt decay to 0 over
    ``branch.length`` steps."""
    from torch.optim.lr_scheduler import LambdaLR

    of_run = run.lr_lambdas[0]

    def rate(step: int) -> float:
        if step <= branch.start:
            return of_run(step)
        return of_run(branch.start) * max(0.0, 1.0 - math.sqrt(min(1.0, (step - branch.start) / branch.length)))

    return LambdaLR(optimizer, rate)


class StudyTrainer(Trainer):
    """A ``Trainer`` that, at each validation point, also measures the validation
    accuracy and label log-probability (main process only) and may stop there.

    Validation leaves the training's random state as it found it: the evaluation loader
    draws a seed from torch's generator, which would shift every later dropout mask, so
    a configuration's training would depend on how often it is validated (successive
    halving's rungs, validations_per_epoch)."""

    def __init__(
        self,
        *args: Any,
        validation: ValidationRun,
        decay_ratio: float = 0.2,
        branch: Branch | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.validation = validation
        self.decay_ratio, self.branch = decay_ratio, branch

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        """warmup_stable_decay with the study's decay share (transformers' needs the decay
        in steps, known only here), or a cool-down branch of the run's schedule; other
        schedules as Trainer makes them."""
        wsd = self.args.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY
        if self.lr_scheduler is None and (wsd or self.branch is not None):
            optimizer = optimizer or self.optimizer
            main_steps = self.branch.main_steps if self.branch else num_training_steps
            schedule = run_schedule(optimizer, self.args, main_steps, self.decay_ratio)
            self.lr_scheduler = cool_down(optimizer, schedule, self.branch) if self.branch else schedule
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        state = _rng_state()
        try:
            return self._evaluate_and_measure(*args, **kwargs)
        finally:
            _set_rng_state(state)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint's adapter, saved without peft's hub lookup: for a hub id it asks
        the hub about the base model's vocabulary at every save ("auto" embedding
        layers), and the embeddings are never trained here."""
        model: Any = self.model  # a peft model (Trainer types it as any module)
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
        try:
            super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained

    def _evaluate_and_measure(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with oom_phase("evaluate"):
            metrics = super().evaluate(*args, **kwargs)
        step = self.state.global_step
        if step not in self.validation.steps:
            return metrics
        model: Any = self.model
        measured = self.validation.measure(model, step)
        model.train()
        if measured is not None:
            vp, stop = measured
            self.log(log_entry(vp))
            if stop:
                self.control.should_training_stop = True
        return metrics


class StudyCallback(TrainerCallback):
    """Schedules validation points, logs progress with an ETA, and stops at a checkpoint:
    where the request pauses (a rung), before the session's deadline, when the process
    is asked to stop, or when the loss is no longer a number."""

    def __init__(
        self,
        validation: ValidationRun,
        validations_per_epoch: int,
        progress: Callable[[str], None],
        deadline: float | None,
        stop_requested: Callable[[], bool],
        progress_interval: float,
        on_checkpoint: Callable[[], None] | None = None,
        save_on_stop: bool = True,
    ) -> None:
        self.validation = validation
        self.on_checkpoint = on_checkpoint
        self.save_on_stop = save_on_stop
        """False in a cool-down branch: it is discarded, a stop leaves no checkpoint of it."""
        self.per_epoch = validations_per_epoch
        self.emit = progress
        self.deadline = deadline
        self.stop_requested = stop_requested
        self.progress = Progress(progress, progress_interval)
        self.stopped_for_budget = False
        self.stopped_on_request = False
        self.paused = False
        self.diverged: str | None = None

    def on_train_begin(self, args, state, control, **kw):
        self.validation.plan(state.max_steps, int(args.num_train_epochs), self.per_epoch)

    def on_save(self, args, state, control, **kw):
        # The checkpoint is whole (trainer_state.json written last): the remote may take it.
        if self.on_checkpoint is not None and state.is_world_process_zero:
            self.on_checkpoint()

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged = f"the training loss became {loss} at step {state.global_step}"
            control.should_training_stop = True
            control.should_save = False

    def on_step_end(self, args, state, control, **kw):
        step, v = state.global_step, self.validation
        if step in v.steps:
            control.should_evaluate = True
        if step >= v.stop_at and v.stop_at < state.max_steps:
            # A rung: validate (above), checkpoint after it, stop; the next call resumes here.
            self.paused = True
            control.should_save = True
            control.should_training_stop = True
            self.emit(
                f"reached step {step}/{state.max_steps} ({100 * step / state.max_steps:.0f}% of training): "
                "checkpointing and pausing"
            )
            return
        loss = next((r["loss"] for r in reversed(state.log_history) if "loss" in r), None)
        self.progress.step(step, state.max_steps, state.epoch or 0.0, args.num_train_epochs, loss, v.stop_at)
        running = step < state.max_steps
        # Stop while there is still time for a few more steps' worth of work (the
        # checkpoint write): the next session resumes from exactly this step.
        late = (
            self.deadline is not None and time.monotonic() + max(5.0, 3 * self.progress.step_seconds) >= self.deadline
        )
        asked, late = agree(running and self.stop_requested(), running and late)
        if asked:
            # SIGTERM: Trainer writes the checkpoint right after this step, then stops.
            self.stopped_on_request = True
            self._checkpoint_and_stop(control, f"stop requested: checkpointing at step {step}/{state.max_steps}")
        elif late:
            self.stopped_for_budget = True
            self._checkpoint_and_stop(control, f"time budget reached at step {step}/{state.max_steps}: checkpointing")

    def _checkpoint_and_stop(self, control, message: str) -> None:
        control.should_save = self.save_on_stop
        control.should_training_stop = True
        control.should_evaluate = False
        self.emit(message + " and stopping")


def agree(*flags: bool) -> tuple[bool, ...]:
    """Under DDP every rank must stop at the same step, or the ones that go on wait in
    their next all-reduce for a rank that left (until NCCL's 30-minute timeout). A stop
    request (a SIGTERM reaches each rank at its own moment) and the deadline (each rank's
    own step time) are decided by one rank alone, so each flag is OR-ed over the ranks
    every step (one tiny all-reduce; a single process returns its own flags)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def _rng_state() -> tuple[Any, ...]:
    return (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )


def _set_rng_state(state: tuple[Any, ...]) -> None:
    py, np_state, cpu, cuda = state
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def tensorboard_callback(log_dir: str):
    """Trainer's TensorBoard integration, writing into ``log_dir`` (one folder per point)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback(tb_writer=SummaryWriter(log_dir=log_dir))
    # Its writer closes at the end of training; the trial's final scores, logged after,
    # reopen one: in the same folder.
    callback.logging_dir = log_dir
    return callback
