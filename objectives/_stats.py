"""Statistics that make a comparison defensible: intervals, F1, confusion, McNemar,
calibration.

Per field, a trial's accuracy is a binomial proportion over the same fixed examples:
its 95% interval is Wilson's (scipy), and two predictors (trials, ensembles, baselines)
scored on the *same* examples are compared with the exact McNemar test, i.e. a two-sided
binomial test on the examples where exactly one of them is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna_search.core import INVALID, METRICS

# Significance level of every test this tool reports.
ALPHA = 0.05
ECE_BINS = 10


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
        return self.p_value < ALPHA


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """Exact McNemar test on paired outcomes (same examples, same order)."""
    from scipy.stats import binomtest

    if len(a_correct) != len(b_correct):
        raise ValueError("McNemar needs paired outcomes on the same examples")
    only_a = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, len(a_correct), p)


def paired_worse(better: Sequence[float], other: Sequence[float]) -> float:
    """One-sided paired t-test (scipy) that ``other`` scores lower than ``better`` on the
    same examples (per-example scores, same order): its p-value; 1.0 when they never
    differ. What a successive-halving rung's cut is judged by: two configurations
    scored on one validation subset differ by less than either's own interval says."""
    from scipy.stats import ttest_rel

    if len(better) != len(other):
        raise ValueError("a paired test needs scores on the same examples")
    if all(a == b for a, b in zip(better, other)):
        return 1.0
    return float(ttest_rel(better, other, alternative="greater").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise
    error rate): the i-th smallest is multiplied by (m - i), then made non-decreasing."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def field_metrics(gold: list[str], predicted: list[str | None], labels: list[str]) -> dict[str, Any]:
    """Every metric of the table (``core.METRICS``: accuracy, macro-F1, ...) by its name, the
    accuracy's Wilson interval ("ci95") and the confusion matrix ("confusion": rows = gold,
    columns = predicted; an unparseable or out-of-vocabulary prediction goes to the column
    '<invalid>')."""
    from sklearn.metrics import confusion_matrix

    pred = [p if p in labels else INVALID for p in predicted]
    correct = sum(g == p for g, p in zip(gold, pred))
    cols = list(labels) + [INVALID]
    cm = confusion_matrix(gold, pred, labels=cols)
    return {
        **{m.name: m.compute(gold, pred, labels) for m in METRICS},
        "ci95": list(wilson_interval(correct, len(gold))),
        "confusion": {"labels": cols, "matrix": cm[: len(labels)].tolist()},
    }


def calibration_metrics(gold: list[str], probs: list[dict[str, float]], labels: list[str]) -> dict[str, float]:
    """Log-loss and the multiclass Brier score (sum over the labels of the squared
    error, for every field alike, two-label ones included) from scikit-learn, and the
    expected calibration error of the top label over 10 equal-width confidence bins."""
    from sklearn.metrics import brier_score_loss, log_loss

    # scikit-learn reads the probability columns in the labels' sorted order, whatever the
    # order of ``labels`` (seen: a field declared as ["urgent", "normal", "low"] scored
    # each example against another label's probability).
    labels = sorted(labels)
    matrix = [[p.get(lab, 0.0) for lab in labels] for p in probs]
    if len(labels) == 1:
        return {"log_loss": 0.0, "brier": 0.0, "ece": 0.0}
    return {
        "log_loss": float(log_loss(gold, matrix, labels=labels)),
        "brier": float(brier_score_loss(gold, matrix, labels=labels, scale_by_half=False)),
        "ece": expected_calibration_error(gold, probs),
    }


def reliability_bins(gold: list[str], probs: list[dict[str, float]], bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin of the top label: count, mean confidence, accuracy (the data
    of a reliability diagram; empty bins are left out)."""
    out = []
    tops = [max(p.items(), key=lambda kv: kv[1]) for p in probs]
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(lab == g, conf) for (lab, conf), g in zip(tops, gold) if lo < conf <= hi or (b == 0 and conf == 0)]
        if members:
            out.append(
                {
                    "low": lo,
                    "high": hi,
                    "count": len(members),
                    "confidence": sum(c for _, c in members) / len(members),
                    "accuracy": sum(ok for ok, _ in members) / len(members),
                }
            )
    return out


def expected_calibration_error(gold: list[str], probs: list[dict[str, float]], bins: int = ECE_BINS) -> float:
    """sum over bins of (bin size / n) * |accuracy - mean confidence| of the top label."""
    n = len(gold)
    return float(
        sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(gold, probs, bins))
    )
