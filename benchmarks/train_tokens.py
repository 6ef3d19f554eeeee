"""Tokens processed per training epoch: the project's batching versus padding every
example to max_length, versus the floor (the sum of true lengths).

Uses the real game-bugs training file, the real Mistral tokenizer, the project's
PromptEncoder, and transformers' own LengthGroupedSampler exactly as Trainer builds it
(train_sampling_strategy="group_by_length", grouped over batch * accumulation), with the
per-device micro-batches then padded to their longest member (dynamic padding).

    python benchmarks/train_tokens.py [--batch 4] [--accum 4] [--max-length 512]
    python benchmarks/train_tokens.py --smoke  # the first 200 reports, one epoch (seconds)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from optuna_search.objectives import PromptEncoder, load_split

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIELDS = ["severity", "component", "reproducibility"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3, help="epochs (sampler seeds) to average over")
    ap.add_argument("--smoke", action="store_true", help="the first 200 reports, one epoch: seconds")
    args = ap.parse_args()
    if args.smoke:
        args.epochs = 1

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers" / "mistral-7b-instruct-v0.2"))
    train = load_split("train", str(SHARED / "data" / "game-bugs" / "train.jsonl"), fields=FIELDS)
    vocab = {f: sorted(train.label_counts(f)) for f in FIELDS}
    enc = PromptEncoder(tok, FIELDS, vocab, args.max_length)
    encoded = [enc.encode(e) for e in train.examples[: 200 if args.smoke else None]]
    lengths = [len(e.input_ids) for e in encoded]
    floor = sum(lengths)
    pad_max = len(lengths) * args.max_length

    grouped_total = 0
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(42 + epoch)
        order = list(LengthGroupedSampler(args.batch * args.accum, lengths=lengths, generator=g))
        grouped_total += sum(
            len(order[i : i + args.batch]) * max(lengths[j] for j in order[i : i + args.batch])
            for i in range(0, len(order), args.batch)
        )
    grouped = grouped_total / args.epochs

    # Random batches with dynamic padding, for reference (what Trainer does by default).
    g = torch.Generator().manual_seed(42)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    random_dyn = sum(
        len(perm[i : i + args.batch]) * max(lengths[j] for j in perm[i : i + args.batch])
        for i in range(0, len(perm), args.batch)
    )
    print(
        f"examples: {len(lengths)}, max_length {args.max_length}, micro-batch {args.batch} x accumulation {args.accum}"
    )
    print(
        f"true lengths: min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}; "
        f"{sum(e.truncated_tokens > 0 for e in encoded)} inputs truncated to fit"
    )
    print(f"floor (sum of true lengths):        {floor:>10,} tokens/epoch")
    print(f"length-grouped + dynamic padding:   {grouped:>10,.0f} tokens/epoch  ({grouped / floor:.3f} x floor)")
    print(f"random order + dynamic padding:     {random_dyn:>10,} tokens/epoch  ({random_dyn / floor:.3f} x floor)")
    print(
        f"pad every example to {args.max_length}:        {pad_max:>10,} tokens/epoch  ({pad_max / floor:.3f} x floor)"
    )
    print(f"pad-to-max / grouped = {pad_max / grouped:.2f}  (measured in {time.perf_counter() - t0:.1f}s)")
    print(f"padded/floor = {grouped / floor:.2f}")


if __name__ == "__main__":
    main()
