"""Evaluation of a fine-tuned model on fixed examples, by the study's method: greedy
generation (``_generate``) or scoring of the closed label sets (``_score``)."""

from __future__ import annotations

import time

from optuna_search.objectives._data import Example
from optuna_search.objectives._generate import generate_predictions
from optuna_search.objectives._metrics import Evaluation, score_predictions
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._score import score_labels


def evaluate(model, tokenizer, encoder: PromptEncoder, examples: list[Example], *, method: str, batch_size: int) -> Evaluation:
    """Predictions and scores on ``examples`` by ``method`` (generate | score);
    ``seconds`` is the model's time (inference speed), not the metrics'."""
    t0 = time.monotonic()
    if method == "score":
        preds = score_labels(model, tokenizer, encoder, examples, batch_size)
    else:
        preds = generate_predictions(model, tokenizer, encoder, examples, batch_size)
    seconds = time.monotonic() - t0
    return Evaluation(preds, score_predictions(preds, encoder.fields, encoder.vocab), seconds, method)
