"""Predictions and their scores on one split's fixed examples.

An output that has no ``Field: value`` line for a field, or whose value is not one of the
field's labels, is wrong for that field. Outputs missing any field line are also counted
as parse failures, separately, so a model that never learned the format is visible.
Label-scoring evaluation (``eval.method = "score"``) also gives each label's probability,
from which calibration is measured: log-loss, Brier score and expected calibration error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optuna_search.core import EXTRA, SplitScores
from optuna_search.objectives._data import Example, parse_label_lines
from optuna_search.objectives._stats import calibration_metrics, field_metrics


@dataclass
class Prediction:
    id: str
    gold: dict[str, str]
    predicted: dict[str, str | None]
    raw: str
    probs: dict[str, dict[str, float]] | None = None
    """Per field, each allowed label's probability (label scoring only)."""

    @property
    def parse_failed(self) -> bool:
        return any(v is None for v in self.predicted.values())

    def correct(self, f: str) -> bool:
        return self.predicted.get(f) == self.gold[f]

    def to_record(self) -> dict[str, Any]:
        rec = {"id": self.id, "gold": self.gold, "predicted": self.predicted, "raw": self.raw}
        if self.probs is not None:
            rec["probs"] = self.probs
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Prediction:
        return cls(rec["id"], rec["gold"], rec["predicted"], rec.get("raw", ""), rec.get("probs"))


def parse_prediction(ex: Example, raw: str, fields: list[str]) -> Prediction:
    return Prediction(ex.id, dict(ex.labels), parse_label_lines(raw, fields), raw)


def score_predictions(preds: list[Prediction], fields: list[str], vocab: dict[str, list[str]]) -> SplitScores:
    """Per field: every metric of the table, the accuracy's Wilson interval and the
    confusion; exact match, parse failures, out-of-vocabulary labels; calibration when
    probabilities are there."""
    if not preds:
        raise ValueError("no predictions to score")
    s = SplitScores(accuracy={}, n=len(preds))
    for f in fields:
        m = field_metrics([p.gold[f] for p in preds], [p.predicted[f] for p in preds], vocab[f])
        s.accuracy[f], s.ci95[f], s.confusion[f] = m["accuracy"], m["ci95"], m["confusion"]
        for metric in EXTRA:
            s.per_field.setdefault(metric.name, {})[f] = m[metric.name]
        allowed = set(vocab[f])
        s.invalid_labels[f] = sum(1 for p in preds if p.predicted[f] is not None and p.predicted[f] not in allowed)
        if all(p.probs is not None for p in preds):
            s.calibration[f] = calibration_metrics([p.gold[f] for p in preds], [p.probs[f] for p in preds], vocab[f])  # type: ignore[index]
    if all(p.probs is not None for p in preds):
        # Mean log-probability of the correct labels, normalised over each field's labels.
        s.label_logprob = sum(
            math.log(max((p.probs or {})[f].get(p.gold[f], 0.0), 1e-12)) for p in preds for f in fields
        ) / (len(preds) * len(fields))  # type: ignore[index]
    s.parse_failures = sum(p.parse_failed for p in preds)
    s.exact_match = sum(all(p.correct(f) for f in fields) for p in preds) / len(preds)
    return s


@dataclass
class Evaluation:
    """Predictions on one split's fixed examples, their scores, and the time it took."""

    predictions: list[Prediction]
    scores: SplitScores
    seconds: float
    method: str = field(default="generate")

    def per_example(self, metric: str) -> list[float] | None:
        """Per example, in order: the mean correctness over the fields (``accuracy``: its
        mean is the overall accuracy) or the mean log-probability of the correct labels
        (``label_logprob``; None without label probabilities). A paired comparison of two
        configurations on the same examples needs these."""
        preds, fields = self.predictions, list(self.scores.accuracy)
        if metric == "accuracy":
            return [sum(p.correct(f) for f in fields) / len(fields) for p in preds]
        if any(p.probs is None for p in preds):
            return None
        return [
            sum(math.log(max((p.probs or {})[f].get(p.gold[f], 0.0), 1e-12)) for f in fields) / len(fields)
            for p in preds
        ]
