"""The study's best trial: one rule, used by the run summary, `status`, the report's
recommendation, `predict --trial best`, `export-model` and the Python API.

Among the COMPLETE trials (a copy that only points at an original, ``duplicate_of``, is
not a candidate), in order, each deciding only what the ones before it left tied:

1. the study's first objective, on the objective's split (``eval.objective_split``), in its
   direction (accuracy up, seconds per example down);
2. the first label field's accuracy on the same split (severity, in the flagship study);
3. the smaller gap between the last epoch's validation and training loss (less overfitting);
4. the faster inference (examples per second of the evaluation);
5. the earlier trial.

Test scores never break a tie when the objective is on validation: the test split is
what the choice is judged on, not what makes it.
"""

from __future__ import annotations

import math

from optuna_search.core._record import Status, TrialRecord
from optuna_search.core._schema import objective_direction


def rank_key(r: TrialRecord, objective: str, split: str, fields: list[str]) -> tuple[float, ...]:
    """Larger is better, criterion by criterion (the module docstring's order)."""
    value = r.objective_value(objective, split)
    sign = -1.0 if objective_direction(objective) == "minimize" else 1.0
    first = r.accuracy(fields[0], split) if fields else None
    tl, el = r.train_loss_per_epoch or [], r.eval_loss_per_epoch or []
    gap = (el[-1] - tl[-1]) if tl and el else math.inf
    speed = r.eval_examples_per_second or 0.0
    return (
        sign * value if value is not None else -math.inf,
        first if first is not None else -math.inf,
        -gap,
        speed,
        -(r.number if r.number is not None else math.inf),
    )


def best_record(records: list[TrialRecord], objective: str, split: str, fields: list[str]) -> TrialRecord | None:
    """The best COMPLETE trial by the rule above; None before one completes."""
    done = [
        r
        for r in records
        if r.state == Status.COMPLETE and r.duplicate_of is None and r.objective_value(objective, split) is not None
    ]
    return max(done, key=lambda r: rank_key(r, objective, split, fields)) if done else None
