"""What an objective is: train one configuration and evaluate it, knowing nothing of
Optuna. The study's adapter (``optuna_search.search._trial``) turns a request into a
trial's parameters and a :class:`TrialResult` into the trial's record.

    class Objective(Protocol):
        def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult: ...

An objective raises :class:`BudgetExhausted` when it stopped at a checkpoint for the
session's deadline and :class:`OutOfMemory` when the batch did not fit; a pruned trial
returns a result with ``pruned_at`` set. Ctrl-C and SIGTERM arrive as KeyboardInterrupt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from optuna_search.core import TrialParams
from optuna_search.objectives._data import Dataset, Example
from optuna_search.objectives._metrics import Evaluation


@dataclass(frozen=True)
class TrialRequest:
    params: TrialParams
    data: Dataset
    """Train and validation splits (loss), vocabularies."""
    test_examples: list[Example]
    """The study's fixed test subset."""
    validation_examples: list[Example]
    """The study's fixed validation subset (accuracy at every validation point)."""
    checkpoint_dir: Path
    """This point's folder: resume from its last checkpoint if there is one."""
    deadline: float | None = None
    """``time.monotonic()`` value to stop at a checkpoint before (the session's budget)."""


def _never_stop(point: int, accuracy: float) -> bool:
    return False


def _no_stop() -> bool:
    return False


def _ignore(message: str) -> None:
    return None


@dataclass(frozen=True)
class TrialHooks:
    on_validation: Callable[[int, float], bool] = _never_stop
    """Called at validation point n (1, 2, ...) with the overall validation accuracy;
    returns True to stop the trial there (pruning)."""
    progress: Callable[[str], None] = _ignore
    """Progress lines (epoch, step, loss, ETA)."""
    stop_requested: Callable[[], bool] = _no_stop
    """True once the process was asked to stop (SIGTERM): training checkpoints at the end
    of the current optimizer step and the objective raises :class:`Stopped`."""


@dataclass
class TrialResult:
    test: Evaluation | None
    """Scores on the test subset; None for a pruned trial (it never reaches the test)."""
    validation: Evaluation | None
    """Scores on the validation subset at the end of training (or where it was pruned)."""
    train_loss_per_epoch: list[float]
    eval_loss_per_epoch: list[float]
    validation_curve: list[tuple[int, float]]
    """(validation point, overall validation accuracy), every point the trial reached."""
    trainable_params: int
    train_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    optimizer_steps: int
    resumed_from_step: int = 0
    compute_dtype: str = ""
    pruned_at: int | None = None
    environment: dict[str, str] = field(default_factory=dict)


class Objective(Protocol):
    def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult: ...


class Stopped(Exception):
    """Training stopped at a fresh checkpoint because the process was asked to stop."""


class BudgetExhausted(Exception):
    """Training stopped at a checkpoint because the session's time budget ran out."""


class OutOfMemory(Exception):
    """The accelerator ran out of memory at the given per-device batch size."""
