"""Baselines every trial must be compared with, computed on the study's eval subset."""

from __future__ import annotations

from collections import Counter

from optuna_search.objectives._data import Example


def majority_baseline(train: list[Example], eval_examples: list[Example], fields: list[str]) -> dict[str, float]:
    """Accuracy of always predicting the training set's most frequent label, per field,
    plus ``overall`` (mean of the fields), on exactly the trials' evaluation examples."""
    out: dict[str, float] = {}
    for f in fields:
        # Ties break alphabetically so the baseline is reproducible.
        counts = Counter(e.labels[f] for e in train)
        label = min(counts, key=lambda k: (-counts[k], k))
        out[f] = sum(e.labels[f] == label for e in eval_examples) / len(eval_examples)
    out["overall"] = sum(out[f] for f in fields) / len(fields)
    return out
