"""What an objective is: train one configuration and evaluate it, knowing nothing of
Optuna. The study's runner (``optuna_search.search.loop._runner``) builds a request from a
trial's parameters and turns the :class:`TrialResult` into the trial's record.

    @runtime_checkable
    class Objective(Protocol):
        def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult: ...

A call returns a :class:`TrialResult` (trained to the end and evaluated, stopped at a
validation point by the pruner, or paused at ``request.train_until``), or raises one of
the protocol's exceptions: :class:`Stopped` (the process was asked to stop and training
checkpointed), :class:`BudgetExhausted` (the session's deadline; checkpointed),
:class:`OutOfMemory` (something did not fit the accelerator; where, in its ``phase``) or
:class:`DivergedTraining` (the loss became nan/inf). Ctrl-C arrives as KeyboardInterrupt;
any other exception is a bug or a
bad input of that configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from optuna_search.objectives._data import Dataset, Example
from optuna_search.objectives._metrics import Evaluation

if TYPE_CHECKING:
    from optuna_search.core import TrialParams


@dataclass(frozen=True)
class TrialRequest:
    params: TrialParams
    data: Dataset
    """Train and validation splits (loss), vocabularies."""
    test_examples: list[Example]
    """The study's fixed test subset."""
    validation_examples: list[Example]
    """The study's fixed validation subset (scored at every validation point)."""
    checkpoint_dir: Path
    """This point's folder: resume from its last checkpoint if there is one."""
    deadline: float | None = None
    """``time.monotonic()`` value to stop at a checkpoint before (the session's budget)."""
    train_until: float = 1.0
    """Fraction of training to reach, then checkpoint and return (successive halving's
    rungs); 1.0 = train to the end and evaluate on the test examples."""
    validate_at: tuple[float, ...] = ()
    """Fractions of training at which to validate besides train.validations_per_epoch
    (the rungs)."""
    run_name: str | None = None
    """The trial's name for the trackers of train.report_to (study, trial, point)."""
    eval_batch_size: int | None = None
    """Examples per evaluation batch (validation points, the validation loss, the test
    evaluation); None: ``eval.batch_size``. Smaller after an out-of-memory retry."""


@dataclass(frozen=True)
class ValidationPoint:
    """What the objective measured at one validation point."""

    point: int
    """1, 2, ...: the index among the trial's validation points (the intermediate value's step)."""
    step: int
    """Optimizer step."""
    fraction: float
    """step / total optimizer steps."""
    accuracy: float
    """Overall accuracy on the validation subset."""
    label_logprob: float | None
    """Mean log-probability of the correct labels (label scoring only)."""
    evaluation: Evaluation | None = None
    """The predictions behind it (main process only)."""
    cooldown_steps: int = 0
    """Measured after a cool-down branch of this many steps from ``step`` (a rung under
    warmup_stable_decay); 0: measured on the run itself."""

    def to_record(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {
            "point": self.point,
            "step": self.step,
            "fraction": round(self.fraction, 6),
            "accuracy": self.accuracy,
            "label_logprob": self.label_logprob,
        }
        if self.cooldown_steps:
            out["cooldown_steps"] = self.cooldown_steps
        return out


def _never_stop(point: ValidationPoint) -> bool:
    return False


def _no_stop() -> bool:
    return False


def _ignore(message: str) -> None:
    return None


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class TrialHooks:
    on_validation: Callable[[ValidationPoint], bool] = _never_stop
    """Called at each validation point; returns True to stop the trial there (pruning)."""
    progress: Callable[[str], None] = _ignore
    """Progress lines (epoch, step, loss, ETA)."""
    stop_requested: Callable[[], bool] = _no_stop
    """True once the process was asked to stop (SIGTERM): training checkpoints at the end
    of the current optimizer step and the objective raises :class:`Stopped`."""
    progress_interval: float = 10.0
    """Seconds between progress lines during training (0: every step)."""
    on_checkpoint: Callable[[], None] = _nothing
    """Called after each checkpoint is written whole (the remote uploads it in the
    background; this only marks it)."""


@dataclass
class TrialResult:
    test: Evaluation | None
    """Scores on the test subset; None when the trial was pruned or paused."""
    validation: Evaluation | None
    """Scores on the validation subset at the last validation point reached."""
    train_loss_per_epoch: list[float]
    eval_loss_per_epoch: list[float]
    validation_curve: list[ValidationPoint]
    """Every validation point the trial reached (across resumes)."""
    trainable_params: int
    train_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    optimizer_steps: int
    max_steps: int = 0
    """Optimizer steps of the whole training (optimizer_steps < max_steps when it stopped early)."""
    resumed_from_step: int = 0
    compute_dtype: str = ""
    pruned_at: int | None = None
    """The validation point at which the pruner stopped it."""
    paused_at_step: int | None = None
    """The step at which it stopped for ``request.train_until`` (resumable)."""
    adapter_dir: str | None = None
    """Where the trained adapter was saved (a finished trial)."""
    environment: dict[str, str] = field(default_factory=dict)
    eval_batch_size: int | None = None
    """The evaluation batch the scores were computed with (`predict` uses the same)."""
    cooldown_curve: list[ValidationPoint] = field(default_factory=list)
    """warmup_stable_decay: each rung's score after its cool-down branch (across resumes;
    the one measured in this call carries its evaluation)."""

    @property
    def finished(self) -> bool:
        return self.pruned_at is None and self.paused_at_step is None


@runtime_checkable
class Objective(Protocol):
    def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult: ...


class Stopped(Exception):
    """Training stopped at a fresh checkpoint because the process was asked to stop."""


class BudgetExhausted(Exception):
    """Training stopped at a checkpoint because the session's time budget ran out."""


OOM_PHASES = ("load", "train", "evaluate")


class OutOfMemory(Exception):
    """The accelerator ran out of memory. ``phase`` says where, and so what a retry
    changes: ``load`` (the base model itself: nothing smaller to try), ``train`` (a
    training step: half the per-device batch, twice the accumulation, from step 0) or
    ``evaluate`` (validation, the validation loss or the final test evaluation: half the
    evaluation batch, training resumed from its checkpoint).

    Raised outside the ``except`` block that caught the library's error, so that neither
    it nor its traceback holds the frames (and through them the model) of the attempt
    that ran out: the retry must find the memory free."""

    def __init__(self, message: str, phase: str = "train") -> None:
        if phase not in OOM_PHASES:
            raise ValueError(f"phase {phase!r} is not one of {OOM_PHASES}")
        super().__init__(message)
        self.phase = phase


class DivergedTraining(Exception):
    """The training loss became nan or inf: the configuration cannot train (a learning
    rate far too high, typically)."""
