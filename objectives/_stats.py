"""Statistics that make a comparison defensible: intervals, F1, confusion, McNemar.

Per field, a trial's accuracy is a binomial proportion over the same fixed examples:
its 95% interval is Wilson's (scipy), and two trials (or a trial and a baseline) scored
on the *same* examples are compared with the exact McNemar test, i.e. a two-sided
binomial test on the examples where exactly one of them is right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INVALID = "<invalid>"


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


@dataclass(frozen=True)
class McNemar:
    only_a: int  # examples A gets right and B wrong
    only_b: int
    n: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def mcnemar_exact(a_correct: list[bool], b_correct: list[bool]) -> McNemar:
    """Exact McNemar test on paired outcomes (same examples, same order)."""
    from scipy.stats import binomtest

    if len(a_correct) != len(b_correct):
        raise ValueError("McNemar needs paired outcomes on the same examples")
    only_a = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, len(a_correct), p)


def field_metrics(gold: list[str], predicted: list[str | None], labels: list[str]) -> dict[str, Any]:
    """Accuracy with Wilson interval, macro-F1 over the field's labels, confusion matrix
    (rows = gold, columns = predicted; an unparseable or out-of-vocabulary prediction
    goes to the column '<invalid>')."""
    from sklearn.metrics import confusion_matrix, f1_score

    pred = [p if p in labels else INVALID for p in predicted]
    correct = sum(g == p for g, p in zip(gold, pred))
    cols = list(labels) + [INVALID]
    cm = confusion_matrix(gold, pred, labels=cols)
    return {
        "accuracy": correct / len(gold),
        "ci95": list(wilson_interval(correct, len(gold))),
        # Macro-F1 over the real labels only: '<invalid>' is never a right answer.
        "macro_f1": float(f1_score(gold, pred, labels=list(labels), average="macro", zero_division=0)),
        "confusion": {"labels": cols, "matrix": cm[: len(labels)].tolist()},
    }
