"""Evaluation of a fine-tuned model on fixed examples, by the study's method: greedy
generation (``_generate``) or scoring of the closed label sets (``_score``), at the
trial's precision.

Precision: under Trainer with fp16/bf16, accelerate wraps the model's ``forward`` in
autocast, which label scoring goes through and ``generate`` does not, and a model loaded
for `predict` has no wrapper at all. Evaluation therefore sets its own autocast from the
trial's compute dtype, whoever calls it (a validation point, the final test evaluation,
`predict`, an exported model), so the three give the same predictions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from optuna_search.objectives._data import Example
from optuna_search.objectives._generate import generate_predictions
from optuna_search.objectives._memory import oom_phase
from optuna_search.objectives._metrics import Evaluation, Prediction, score_predictions
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._score import score_labels


@contextlib.contextmanager
def precision(model: Any, dtype: Any) -> Iterator[None]:
    """Autocast to ``dtype`` on the model's device when it is a 16-bit type (fp32: as is)."""
    import torch

    if dtype not in (torch.float16, torch.bfloat16):
        yield
        return
    device = next(p.device for p in model.parameters()).type
    with torch.autocast(device_type=device, dtype=dtype):
        yield


def evaluate_examples(
    model,
    tokenizer,
    encoder: PromptEncoder,
    examples: list[Example],
    *,
    method: str,
    batch_size: int,
    dtype: Any = None,
) -> list[Prediction]:
    """One prediction per example, in order, by ``method`` at ``dtype``: what evaluation
    and `predict` both run (batched by length; see ``_generate`` and ``_score``)."""
    with precision(model, dtype):
        if method == "score":
            return score_labels(model, tokenizer, encoder, examples, batch_size)
        return generate_predictions(model, tokenizer, encoder, examples, batch_size)


def evaluate(
    model,
    tokenizer,
    encoder: PromptEncoder,
    examples: list[Example],
    *,
    method: str,
    batch_size: int,
    dtype: Any = None,
) -> Evaluation:
    """Predictions and scores on ``examples`` by ``method`` (generate | score);
    ``seconds`` is the model's time (inference speed), not the metrics'."""
    t0 = time.monotonic()
    preds = evaluate_examples(model, tokenizer, encoder, examples, method=method, batch_size=batch_size, dtype=dtype)
    seconds = time.monotonic() - t0
    return Evaluation(preds, score_predictions(preds, encoder.fields, encoder.vocab), seconds, method)


@dataclass(frozen=True)
class Evaluator:
    """How one trial evaluates (method, batch, precision); running out of memory in it is
    an ``evaluate``-phase OutOfMemory (a retry halves the batch, training is kept)."""

    tokenizer: Any
    encoder: PromptEncoder
    method: str
    batch_size: int
    dtype: Any = None

    def __call__(self, model: Any, examples: list[Example]) -> Evaluation:
        with oom_phase("evaluate"):
            return evaluate(
                model,
                self.tokenizer,
                self.encoder,
                examples,
                method=self.method,
                batch_size=self.batch_size,
                dtype=self.dtype,
            )
