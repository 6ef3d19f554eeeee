"""Evaluation by scoring the closed label sets (``eval.method = "score"``).

For each field, in answer order, every allowed label is scored as the continuation of
the prompt and the answer so far: the sum of its tokens' log-probabilities (a label of
several tokens counts all of them, and the token that ends its line too, so a label that
is a prefix of another is not favoured). The most probable label is chosen and is what
the next field is conditioned on, as generation would be; the probabilities normalised
over the field's labels are kept for calibration and soft-voting ensembles. By
construction there are no parse failures.

Each prompt is encoded once and its key/value cache reused for every field and
candidate; prompts are batched (left padding, explicit positions) and a field's
candidates are run as one batch on a copy of the cache.
"""

from __future__ import annotations

import copy
import math

from optuna_search.objectives._data import Example
from optuna_search.objectives._generate import by_length, inference, left_padded
from optuna_search.objectives._metrics import Prediction
from optuna_search.objectives._prompt import PromptEncoder, answer_text


def candidate_ids(encoder: PromptEncoder, chosen: dict[str, str], field_name: str, label: str) -> list[int]:
    """Answer tokens from the start of the answer through ``label`` and the token(s)
    that end its line, with earlier fields' chosen labels: tokenized as one text, as in
    training."""
    fields = encoder.fields
    i = fields.index(field_name)
    lines = answer_text({**chosen, field_name: label}, fields[: i + 1])
    last = i == len(fields) - 1
    ids = encoder.tokenizer(encoder.answer_prefix + lines + ("" if last else "\n"), add_special_tokens=False)["input_ids"]
    return ids + (encoder.end_ids if last else [])


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _cache_kwarg(model) -> str:
    """transformers renamed the forward's ``past_key_values`` to ``cache`` (5.2x); use
    whichever this version's model takes."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def score_labels(model, tokenizer, encoder: PromptEncoder, examples: list[Example], batch_size: int) -> list[Prediction]:
    prompts = [encoder.encode_prompt(e)[0] for e in examples]
    results: dict[int, tuple[dict[str, str], dict[str, dict[str, float]]]] = {}
    with inference(model):
        for idx in by_length(prompts, batch_size):
            batch = _Batch(model, encoder, [prompts[i] for i in idx], tokenizer.pad_token_id)
            results.update(zip(idx, batch.run()))
    preds = []
    for i, e in enumerate(examples):
        chosen, probs = results[i]
        preds.append(Prediction(e.id, dict(e.labels), dict(chosen), answer_text(chosen, encoder.fields), probs))
    return preds


class _Batch:
    """One batch of prompts, scored field by field on a shared key/value cache."""

    def __init__(self, model, encoder: PromptEncoder, prompts: list[list[int]], pad: int) -> None:
        import torch

        self.model, self.encoder, self.pad = model, encoder, pad
        self.device = next(p.device for p in model.parameters())
        ids, mask = left_padded(prompts, pad)
        self.prompt_len = mask.sum(-1).tolist()
        self.cache_arg = _cache_kwarg(model)
        out = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.device), use_cache=True)
        self.cache = _cache_of(out)
        self.mask = mask.to(self.device)
        self.last_logits = out.logits[:, -1, :].float()
        self.rows = len(prompts)
        self.consumed: list[list[int]] = [[] for _ in prompts]  # answer tokens in the cache
        self.slots: list[list[int]] = [[] for _ in prompts]  # their cache columns
        self._torch = torch

    def run(self) -> list[tuple[dict[str, str], dict[str, dict[str, float]]]]:
        chosen: list[dict[str, str]] = [{} for _ in range(self.rows)]
        probs: list[dict[str, dict[str, float]]] = [{} for _ in range(self.rows)]
        for f in self.encoder.fields:
            labels = self.encoder.vocab[f]
            cands = [[candidate_ids(self.encoder, chosen[b], f, lab) for lab in labels] for b in range(self.rows)]
            prefixes = [c[0][: _common_prefix(c)] for c in cands]
            self._advance(prefixes)
            logp = self._candidate_logprobs([[c[len(p):] for c in cs] for cs, p in zip(cands, prefixes)])
            for b in range(self.rows):
                top = max(logp[b])
                norm = [math.exp(v - top) for v in logp[b]]
                total = sum(norm)
                probs[b][f] = {lab: v / total for lab, v in zip(labels, norm)}
                chosen[b][f] = labels[max(range(len(labels)), key=lambda k: logp[b][k])]
        return list(zip(chosen, probs))

    def _advance(self, prefixes: list[list[int]]) -> None:
        """Bring every row's cache to its answer prefix: keep the tokens it shares with
        what is cached, mask out the rest (a tokenization that changed at the boundary),
        feed the new ones."""
        torch = self._torch
        feeds, keeps = [], []
        for b, prefix in enumerate(prefixes):
            keep = _common_prefix([self.consumed[b], prefix]) if self.consumed[b] else 0
            for col in self.slots[b][keep:]:
                self.mask[b, col] = 0
            feeds.append(prefix[keep:])
            keeps.append(keep)
        width = max(len(f) for f in feeds)
        if width == 0:
            return
        ids = torch.full((self.rows, width), self.pad, dtype=torch.long)
        new_mask = torch.zeros((self.rows, width), dtype=torch.long)
        pos = torch.zeros((self.rows, width), dtype=torch.long)
        for b, feed in enumerate(feeds):
            if feed:
                ids[b, : len(feed)] = torch.tensor(feed, dtype=torch.long)
            new_mask[b, : len(feed)] = 1
            pos[b, : len(feed)] = torch.arange(len(feed)) + self.prompt_len[b] + keeps[b]
        first_col = self.mask.shape[1]
        self.mask = torch.cat([self.mask, new_mask.to(self.device)], dim=1)
        out = self.model(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos.to(self.device),
                         use_cache=True, **{self.cache_arg: self.cache})
        self.cache = _cache_of(out)
        for b, feed in enumerate(feeds):
            self.consumed[b] = prefixes[b]
            self.slots[b] = self.slots[b][: keeps[b]] + [first_col + j for j in range(len(feed))]
            if feed:
                self.last_logits[b] = out.logits[b, len(feed) - 1].float()

    def _candidate_logprobs(self, conts: list[list[list[int]]]) -> list[list[float]]:
        """Sum of log-probabilities of each row's candidate continuations."""
        torch = self._torch
        first = torch.log_softmax(self.last_logits, dim=-1)
        scores = [[float(first[b, c[0]]) for c in cs] for b, cs in enumerate(conts)]
        k = len(conts[0])
        longest = max(len(c) for cs in conts for c in cs)
        if longest == 1:
            return scores  # single-token continuations: the prefix's logits say it all
        ids = torch.full((self.rows * k, longest - 1), self.pad, dtype=torch.long)
        new_mask = torch.zeros_like(ids)
        pos = torch.zeros_like(ids)
        for b, cs in enumerate(conts):
            start = self.prompt_len[b] + len(self.consumed[b])
            for j, c in enumerate(cs):
                r = b * k + j
                if len(c) > 1:
                    ids[r, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                new_mask[r, : len(c) - 1] = 1
                pos[r, : len(c) - 1] = torch.arange(len(c) - 1) + start
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(k)
        mask = torch.cat([self.mask.repeat_interleave(k, dim=0), new_mask.to(self.device)], dim=1)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=pos.to(self.device),
                         use_cache=True, **{self.cache_arg: cache})
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        for b, cs in enumerate(conts):
            for j, c in enumerate(cs):
                r = b * k + j
                scores[b][j] += sum(float(logp[r, t, c[t + 1]]) for t in range(len(c) - 1))
        return scores
