"""Evaluation of a fine-tuned model on fixed examples, by the study's method: greedy
generation (``_generate``) or scoring of the closed label sets (``_score``)."""

from __future__ import annotations

import time

from optuna_search.objectives._data import Example
from optuna_search.objectives._generate import generate_predictions
from optuna_search.objectives._metrics import Evaluation, Prediction, score_predictions
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._score import score_labels


def evaluate_examples(model, tokenizer, encoder: PromptEncoder, examples: list[Example], *, method: str,
                      batch_size: int) -> list[Prediction]:
    """One prediction per example, in order, by ``method``: what evaluation and `predict`
    both run (batched by length; see ``_generate`` and ``_score``)."""
    if method == "score":
        return score_labels(model, tokenizer, encoder, examples, batch_size)
    return generate_predictions(model, tokenizer, encoder, examples, batch_size)


def evaluate(model, tokenizer, encoder: PromptEncoder, examples: list[Example], *, method: str, batch_size: int) -> Evaluation:
    """Predictions and scores on ``examples`` by ``method`` (generate | score);
    ``seconds`` is the model's time (inference speed), not the metrics'."""
    t0 = time.monotonic()
    preds = evaluate_examples(model, tokenizer, encoder, examples, method=method, batch_size=batch_size)
    seconds = time.monotonic() - t0
    return Evaluation(preds, score_predictions(preds, encoder.fields, encoder.vocab), seconds, method)
