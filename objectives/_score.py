"""Evaluation by scoring the closed label sets (``eval.method = "score"``).

For each field, in answer order, every allowed label is scored as the continuation of
the prompt and the answer so far: the sum of its tokens' log-probabilities (a label of
several tokens counts all of them, and the token that ends its line too, so a label that
is a prefix of another is not favoured). The most probable label is chosen and is what
the next field is conditioned on, as generation would be; the probabilities normalised
over the field's labels are kept for calibration and soft-voting ensembles. By
construction there are no parse failures.

Each prompt is encoded once and its key/value cache reused for every field and
candidate: prompts are batched (left padding, explicit positions), and a field's
candidates are laid side by side after the answer prefix with a 4D attention mask, so
one forward pass scores them all without copying the cache.
"""

from __future__ import annotations

import math
from typing import Any

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
    ids = encoder.tokenizer(encoder.answer_prefix + lines + ("" if last else "\n"), add_special_tokens=False)[
        "input_ids"
    ]
    return ids + (encoder.end_ids if last else [])


class _Candidates:
    """``candidate_ids`` memoised for one scoring run: most examples share their earlier
    labels, so each distinct answer prefix is tokenized once (and nothing outlives the run)."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder = encoder
        self.memo: dict[tuple[Any, ...], list[int]] = {}

    def __call__(self, chosen: dict[str, str], field_name: str, label: str) -> list[int]:
        fields = self.encoder.fields
        key = (tuple(chosen.get(f) for f in fields[: fields.index(field_name)]), field_name, label)
        if key not in self.memo:
            self.memo[key] = candidate_ids(self.encoder, chosen, field_name, label)
        return self.memo[key]


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _forward_kwargs(model) -> tuple[str, dict[str, int]]:
    """What this transformers version's forward takes: the cache's argument name
    (``past_key_values`` was renamed ``cache`` in 5.2x), and ``logits_to_keep`` where
    supported, to ask for the last position's logits only (a prompt's other logits are
    never used, and over a 49k-token vocabulary they cost a fifth of the prefill)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), (
        {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    )


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def score_labels(
    model, tokenizer, encoder: PromptEncoder, examples: list[Example], batch_size: int
) -> list[Prediction]:
    prompts = [encoder.encode_prompt(e)[0] for e in examples]
    results: dict[int, tuple[dict[str, str], dict[str, dict[str, float]]]] = {}
    candidates, forward = _Candidates(encoder), _forward_kwargs(model)
    with inference(model):
        for idx in by_length(prompts, batch_size):
            batch = _Batch(model, encoder, [prompts[i] for i in idx], tokenizer.pad_token_id, candidates, forward)
            results.update(zip(idx, batch.run()))
    preds = []
    for i, e in enumerate(examples):
        chosen, probs = results[i]
        preds.append(Prediction(e.id, dict(e.labels), dict(chosen), answer_text(chosen, encoder.fields), probs))
    return preds


class _Batch:
    """One batch of prompts, scored field by field on a shared key/value cache."""

    def __init__(
        self,
        model,
        encoder: PromptEncoder,
        prompts: list[list[int]],
        pad: int,
        candidates: _Candidates,
        forward: tuple[str, dict[str, int]],
    ) -> None:
        import torch

        self.model, self.encoder, self.pad, self.candidates = model, encoder, pad, candidates
        self.device = next(p.device for p in model.parameters())
        ids, mask = left_padded(prompts, pad)
        self.prompt_len = mask.sum(-1).tolist()
        self.cache_arg, self.last_only = forward
        out = model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
            use_cache=True,
            **self.last_only,
        )
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
            cands = [[self.candidates(chosen[b], f, lab) for lab in labels] for b in range(self.rows)]
            prefixes = [c[0][: _common_prefix(c)] for c in cands]
            self._advance(prefixes)
            logp = self._candidate_logprobs([[c[len(p) :] for c in cs] for cs, p in zip(cands, prefixes)])
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
        feed the new ones (left-padded, so every row's last new token is the last column)."""
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
                ids[b, width - len(feed) :] = torch.tensor(feed, dtype=torch.long)
                new_mask[b, width - len(feed) :] = 1
                pos[b, width - len(feed) :] = torch.arange(len(feed)) + self.prompt_len[b] + keeps[b]
        first_col = self.mask.shape[1]
        self.mask = torch.cat([self.mask, new_mask.to(self.device)], dim=1)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=self.mask,
            position_ids=pos.to(self.device),
            use_cache=True,
            **self.last_only,
            **{self.cache_arg: self.cache},
        )
        self.cache = _cache_of(out)
        for b, feed in enumerate(feeds):
            self.consumed[b] = prefixes[b]
            self.slots[b] = self.slots[b][: keeps[b]] + [first_col + width - len(feed) + j for j in range(len(feed))]
            if feed:
                self.last_logits[b] = out.logits[b, -1].float()

    def _candidate_logprobs(self, conts: list[list[list[int]]]) -> list[list[float]]:
        """Sum of log-probabilities of each row's candidate continuations."""
        torch = self._torch
        k = len(conts[0])
        firsts = torch.tensor([[c[0] for c in cs] for cs in conts], device=self.last_logits.device)
        scores = torch.log_softmax(self.last_logits, dim=-1).gather(1, firsts)  # (rows, k)
        longest = max(len(c) for cs in conts for c in cs)
        if longest > 1:  # multi-token labels: run their other tokens on a copy of the cache
            scores = scores + self._later_tokens_logprob(conts, k, longest).view(self.rows, k)
        return scores.tolist()

    def _later_tokens_logprob(self, conts: list[list[list[int]]], k: int, longest: int):
        """The log-probability of every candidate's tokens after its first, in one forward
        pass per batch: each row's candidates are laid side by side after the cached answer
        prefix, each attending to the prefix and to its own earlier tokens only (a 4D
        attention mask), so the cache is shared instead of copied per candidate."""
        torch = self._torch
        spans = [[(j, c) for j, c in enumerate(cs) if len(c) > 1] for cs in conts]
        width = max(sum(len(c) - 1 for _, c in row) for row in spans)
        ids = torch.full((self.rows, width), self.pad, dtype=torch.long)
        target = torch.zeros_like(ids)
        pos = torch.zeros_like(ids)
        owner = torch.full((self.rows, width), -1, dtype=torch.long)  # which candidate a column holds
        for b, row in enumerate(spans):
            col, start = 0, self.prompt_len[b] + len(self.consumed[b])
            for j, c in row:
                n = len(c) - 1
                ids[b, col : col + n], target[b, col : col + n] = torch.tensor(c[:-1]), torch.tensor(c[1:])
                pos[b, col : col + n] = torch.arange(n) + start
                owner[b, col : col + n] = j
                col += n
        past = self.mask.shape[1]
        # Query q of row b sees the row's cached columns, and the new columns of its own
        # candidate up to itself; a padding query sees itself only (no empty softmax).
        own = (owner.unsqueeze(2) == owner.unsqueeze(1)) & (owner.unsqueeze(2) >= 0)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        new = (own & causal) | torch.eye(width, dtype=torch.bool)
        cached = self.mask.bool().cpu().unsqueeze(1) & (owner >= 0).unsqueeze(2)
        allowed = torch.cat([cached, new], dim=2).unsqueeze(1).to(self.device)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=_additive(allowed, self.model),
            position_ids=pos.to(self.device),
            use_cache=True,
            **{self.cache_arg: self.cache},
        )
        self.cache = _cache_of(out)
        # The candidates' columns stay in the cache, masked out for every later call.
        self.mask = torch.cat(
            [self.mask, torch.zeros((self.rows, width), dtype=self.mask.dtype, device=self.device)], dim=1
        )
        assert self.mask.shape[1] == past + width
        logp = torch.log_softmax(out.logits.float(), dim=-1).gather(2, target.to(self.device).unsqueeze(-1)).squeeze(-1)
        per_candidate = torch.zeros((self.rows, k), dtype=logp.dtype, device=logp.device)
        valid = owner.to(self.device) >= 0
        per_candidate.scatter_add_(
            1, owner.clamp(min=0).to(self.device), torch.where(valid, logp, torch.zeros_like(logp))
        )
        return per_candidate.view(-1)


def _additive(allowed, model):
    """The 4D mask as the model's attention takes it: boolean for SDPA, an additive
    float mask (0 / very negative) for eager attention."""
    import torch

    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )
