"""Baselines every trial must be compared with, computed on the study's eval subset.

- majority: always the training set's most frequent label of the field;
- tfidf_logreg: TF-IDF (word 1-2 grams) + logistic regression per field (scikit-learn),
  trained on the training split's instruction + report text.

Each gives per-example predictions on exactly the trials' evaluation examples, so a
trial can be tested against it with the paired McNemar test, not just by eye.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from optuna_search.core import METRICS
from optuna_search.objectives._data import Example
from optuna_search.objectives._stats import field_metrics


def majority_predictions(
    train: list[Example], eval_examples: list[Example], fields: list[str]
) -> dict[str, dict[str, str]]:
    labels = {}
    for f in fields:
        counts = Counter(e.labels[f] for e in train)
        labels[f] = min(counts, key=lambda k: (-counts[k], k))  # ties: alphabetical, reproducible
    return {e.id: dict(labels) for e in eval_examples}


def tfidf_predictions(
    train: list[Example], eval_sets: dict[str, list[Example]], fields: list[str], seed: int = 0
) -> dict[str, dict[str, dict[str, str]]]:
    """Per evaluation set: {id: {field: label}} from one TF-IDF + logistic regression
    model per field, fitted once on the training examples."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def text(e: Example) -> str:
        return f"{e.instruction}\n{e.input}"

    out: dict[str, dict[str, dict[str, str]]] = {name: {e.id: {} for e in ex} for name, ex in eval_sets.items()}
    x_train = [text(e) for e in train]
    for f in fields:
        y = [e.labels[f] for e in train]
        model = None
        if len(set(y)) > 1:
            model = make_pipeline(
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
            ).fit(x_train, y)
        for name, examples in eval_sets.items():
            if not examples:
                continue
            pred = model.predict([text(e) for e in examples]).tolist() if model is not None else [y[0]] * len(examples)
            for e, p in zip(examples, pred):
                out[name][e.id][f] = p
    return out


def metrics_of(
    predictions: dict[str, dict[str, str]], eval_examples: list[Example], fields: list[str], vocab: dict[str, list[str]]
) -> dict[str, float]:
    """Every metric of the table, as the trials have them: accuracy per field (under the
    field's name) and "overall"; the others as ``<field>_<metric>`` and their overall name
    (``Metric.in_baseline`` reads them back)."""
    out: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {m.name: [] for m in METRICS}
    for f in fields:
        m = field_metrics([e.labels[f] for e in eval_examples], [predictions[e.id][f] for e in eval_examples], vocab[f])
        for metric in METRICS:
            out[f if metric.name == "accuracy" else f"{f}_{metric.name}"] = m[metric.name]
            per_metric[metric.name].append(m[metric.name])
    for metric in METRICS:
        out["overall" if metric.name == "accuracy" else metric.overall] = metric.aggregate(per_metric[metric.name])
    return out


def compute_baselines(
    train: list[Example], eval_sets: dict[str, list[Example]], fields: list[str], vocab: dict[str, list[str]]
) -> dict[str, Any]:
    """Per evaluation set: {"metrics": {name: {field: acc, "overall": acc, ...F1s}},
    "predictions": {name: {id: {field: label}}}}."""
    tfidf = tfidf_predictions(train, eval_sets, fields)
    out = {}
    for set_name, examples in eval_sets.items():
        preds = {"majority": majority_predictions(train, examples, fields), "tfidf_logreg": tfidf[set_name]}
        out[set_name] = {
            "metrics": {name: metrics_of(p, examples, fields, vocab) for name, p in preds.items()} if examples else {},
            "predictions": preds,
        }
    return out
