"""Scoring generated answers against gold labels.

An output that has no ``Field: value`` line for a field, or whose value is not one of the
field's labels, is wrong for that field. Outputs missing any field line are also counted
as parse failures, separately, so a model that never learned the format is visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna_search.objectives._data import Example, parse_label_lines


@dataclass
class Prediction:
    id: str
    gold: dict[str, str]
    predicted: dict[str, str | None]
    raw: str

    @property
    def parse_failed(self) -> bool:
        return any(v is None for v in self.predicted.values())

    def correct(self, f: str) -> bool:
        return self.predicted.get(f) == self.gold[f]


@dataclass
class Scores:
    fields: list[str]
    n: int
    accuracy: dict[str, float] = field(default_factory=dict)
    parse_failures: int = 0
    invalid_labels: dict[str, int] = field(default_factory=dict)

    @property
    def overall(self) -> float:
        return sum(self.accuracy[f] for f in self.fields) / len(self.fields)


def parse_prediction(ex: Example, raw: str, fields: list[str]) -> Prediction:
    return Prediction(ex.id, dict(ex.labels), parse_label_lines(raw, fields), raw)


def score_predictions(preds: list[Prediction], fields: list[str], vocab: dict[str, list[str]]) -> Scores:
    if not preds:
        raise ValueError("no predictions to score")
    s = Scores(fields, len(preds))
    for f in fields:
        s.accuracy[f] = sum(p.correct(f) for p in preds) / len(preds)
        allowed = set(vocab[f])
        s.invalid_labels[f] = sum(1 for p in preds if p.predicted[f] is not None and p.predicted[f] not in allowed)
    s.parse_failures = sum(p.parse_failed for p in preds)
    return s
