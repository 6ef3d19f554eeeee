"""Greedy, batched generation on fixed examples (``eval.method = "generate"``). Greedy
decoding makes the score a deterministic function of the weights: sampling with a
temperature would make two evaluations of the same model disagree."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from optuna_search.objectives._data import Example
from optuna_search.objectives._metrics import Prediction, parse_prediction
from optuna_search.objectives._prompt import PromptEncoder


def left_padded(prompts: list[list[int]], pad: int):
    """(ids, mask) tensors, left-padded so every row ends at the right edge."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


@contextlib.contextmanager
def inference(model) -> Iterator[None]:
    """Eval mode, no autograd, the key/value cache on (training switches it off)."""
    import torch

    model.eval()
    was_cache = getattr(model.config, "use_cache", True)
    model.config.use_cache = True
    try:
        with torch.inference_mode():
            yield
    finally:
        model.config.use_cache = was_cache


def by_length(prompts: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of the prompts in batches of similar length, so batches pad little."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def generate_predictions(
    model, tokenizer, encoder: PromptEncoder, examples: list[Example], batch_size: int
) -> list[Prediction]:
    """Greedy, batched generation, stopping at the template's end-of-turn token."""
    device = next(p.device for p in model.parameters())
    prompts = [encoder.encode_prompt(e)[0] for e in examples]
    raw: dict[int, str] = {}
    with inference(model):
        for idx in by_length(prompts, batch_size):
            ids, mask = left_padded([prompts[i] for i in idx], tokenizer.pad_token_id)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=encoder.max_answer_tokens + 4,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=encoder.stop_token_ids,
            )
            for row, i in enumerate(idx):
                raw[i] = tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
    return [parse_prediction(examples[i], raw[i], encoder.fields) for i in range(len(examples))]
