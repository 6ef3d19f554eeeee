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

from optuna_search.objectives._data import Example


def majority_predictions(train: list[Example], eval_examples: list[Example], fields: list[str]) -> dict[str, dict[str, str]]:
    labels = {}
    for f in fields:
        counts = Counter(e.labels[f] for e in train)
        labels[f] = min(counts, key=lambda k: (-counts[k], k))  # ties: alphabetical, reproducible
    return {e.id: dict(labels) for e in eval_examples}


def tfidf_predictions(train: list[Example], eval_examples: list[Example], fields: list[str], seed: int = 0) -> dict[str, dict[str, str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def text(e: Example) -> str:
        return f"{e.instruction}\n{e.input}"

    out: dict[str, dict[str, str]] = {e.id: {} for e in eval_examples}
    x_train = [text(e) for e in train]
    x_eval = [text(e) for e in eval_examples]
    for f in fields:
        y = [e.labels[f] for e in train]
        if len(set(y)) == 1:
            pred = [y[0]] * len(eval_examples)
        else:
            model = make_pipeline(
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
            )
            pred = model.fit(x_train, y).predict(x_eval).tolist()
        for e, p in zip(eval_examples, pred):
            out[e.id][f] = p
    return out


def accuracy_of(predictions: dict[str, dict[str, str]], eval_examples: list[Example], fields: list[str]) -> dict[str, float]:
    acc = {f: sum(predictions[e.id][f] == e.labels[f] for e in eval_examples) / len(eval_examples) for f in fields}
    acc["overall"] = sum(acc[f] for f in fields) / len(fields)
    return acc


def compute_baselines(train: list[Example], eval_examples: list[Example], fields: list[str]) -> dict[str, Any]:
    """{"accuracy": {name: {field: acc, "overall": acc}}, "predictions": {name: {id: {field: label}}}}"""
    preds = {
        "majority": majority_predictions(train, eval_examples, fields),
        "tfidf_logreg": tfidf_predictions(train, eval_examples, fields),
    }
    return {
        "accuracy": {name: accuracy_of(p, eval_examples, fields) for name, p in preds.items()},
        "predictions": preds,
    }


def majority_baseline(train: list[Example], eval_examples: list[Example], fields: list[str]) -> dict[str, float]:
    """Accuracy of the majority-class predictor, per field and ``overall``."""
    return accuracy_of(majority_predictions(train, eval_examples, fields), eval_examples, fields)
