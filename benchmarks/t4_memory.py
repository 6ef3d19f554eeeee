"""The memory a trial needs, estimated (objectives/_footprint.py) and measured.

For a decoder model's shape (default: Mistral-7B's layers, fewer of them), at the flagship's
settings (NF4 with double quantization, LoRA r on q/k/v/o, batch 4 x 512 tokens, paged 8-bit
AdamW, evaluation batch 16), it prints the estimate per part, then loads such a model with
random weights through the project's own loader (4-bit, prepared for k-bit training, LoRA)
and measures: the weights after loading, the peak of a training step with and without
gradient checkpointing, the peak of an evaluation forward pass with its key/value cache.
On a GPU it measures torch.cuda.max_memory_allocated (the figure a T4's 15 GiB bounds);
on a CPU the process's peak RSS above what it held before (each phase in a process of its
own). Last line: the measured/estimated ratio of the training step's peak, and the
estimate for the full model.

    python benchmarks/t4_memory.py                        # GPU if there is one, else CPU
    python benchmarks/t4_memory.py --layers 2 --hidden 1024 --intermediate 3584 --heads 8 --kv-heads 2
    python benchmarks/t4_memory.py --smoke     # a one-layer model of width 64 (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from optuna_search.objectives import GiB, Setting, Shape, estimate, render_footprint


def _model_dir(args, root: Path) -> Path:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=4096,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = MistralForCausalLM(cfg).half()
    model.save_pretrained(str(root))
    return root


def _measure(model_dir: str, phase: str, args) -> dict:
    """One phase in this process: load (weights), train (one step), eval (cache)."""
    import torch

    from optuna_search.core import build_config
    from optuna_search.objectives import load_lora_model

    cuda = torch.cuda.is_available()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = build_config(
        {
            "model": {"name_or_path": model_dir, "compute_dtype": "float16" if cuda else "float32"},
            "train": {"optim": "paged_adamw_8bit", "gradient_checkpointing": phase != "train-nockpt"},
            "lora": {"r": args.r},
            "data": {"train": "unused.jsonl", "validation": "unused.jsonl", "test": "unused.jsonl"},
        }
    )
    params = config.trial_params({})
    model, dtype = load_lora_model(model_dir, config.model, params, phase != "train-nockpt")
    device = next(p.device for p in model.parameters())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = {"after_load": torch.cuda.memory_allocated() if cuda else None}
    ids = torch.randint(
        3, args.vocab, (args.batch if phase.startswith("train") else args.eval_batch, args.length), device=device
    )
    if phase.startswith("train"):
        import bitsandbytes as bnb

        model.train()
        opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
    elif phase == "eval":
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=cuda):
            model(input_ids=ids, use_cache=True)
    peak = (
        torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    )
    return {**out, "peak": peak, "kind": "cuda_max_allocated" if cuda else "process_peak_rss_above_start"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument(
        "--full-layers", type=int, default=32, help="layers of the full model, for the last line's estimate"
    )
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="a one-layer model of width 64, 32 tokens: seconds")
    args = ap.parse_args()
    if args.smoke:
        args.__dict__.update(
            layers=1,
            hidden=64,
            intermediate=128,
            heads=4,
            kv_heads=2,
            vocab=512,
            full_layers=2,
            batch=2,
            length=32,
            eval_batch=2,
            r=4,
            smoke=False,
        )
    if args.phase:  # a child: one measurement
        print(json.dumps(_measure(args.model_dir, args.phase, args)))
        return
    import torch

    cuda = torch.cuda.is_available()
    shape = Shape(args.vocab, args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads)
    setting = Setting(
        batch_size=args.batch,
        max_length=args.length,
        lora_r=args.r,
        eval_batch_size=args.eval_batch,
        compute_bytes=2 if cuda else 4,
    )
    print(f"shape: {shape}\nsetting: {setting}\n\nestimate ({args.layers} layers):")
    est = estimate(shape, setting)
    est_nockpt = estimate(shape, Setting(**{**setting.__dict__, "gradient_checkpointing": False}))
    print(render_footprint(est))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_dir(args, Path(tmp))
        measured = {}
        for phase in ("train", "train-nockpt", "eval"):
            cmd = [sys.executable, __file__, "--phase", phase, "--model-dir", str(model_dir)] + [
                a
                for k, v in vars(args).items()
                if k not in ("phase", "model_dir", "smoke")
                for a in (f"--{k.replace('_', '-')}", str(v))
            ]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"the {phase} measurement failed")
            measured[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    overhead = est["CUDA context + allocator"]  # not in max_memory_allocated, nor in a CPU process
    train_est = est["total"] - est["evaluation KV cache"] - overhead
    nockpt_est = est_nockpt["total"] - est_nockpt["evaluation KV cache"] - overhead
    eval_est = est["weights"] + est["evaluation KV cache"] + est["logits"] // 2 * args.eval_batch // args.batch
    rows = [
        ("training step, gradient checkpointing", train_est, measured["train"]["peak"]),
        ("training step, no checkpointing", nockpt_est, measured["train-nockpt"]["peak"]),
        ("evaluation forward with cache", eval_est, measured["eval"]["peak"]),
    ]
    print(
        f"\nmeasured ({measured['train']['kind']}; the estimate without the CUDA context, which "
        f"max_memory_allocated does not count):"
    )
    print(f"{'':40s} {'estimate':>10s} {'measured':>10s} {'ratio':>6s}")
    for name, e, m in rows:
        print(f"{name:40s} {e / GiB:9.2f}G {m / GiB:9.2f}G {m / e:6.2f}")
    if measured["train"]["after_load"] is not None:
        print(
            f"{'weights after loading':40s} {est['weights'] / GiB:9.2f}G {measured['train']['after_load'] / GiB:9.2f}G "
            f"{measured['train']['after_load'] / est['weights']:6.2f}"
        )
    full = estimate(
        Shape(args.vocab, args.hidden, args.intermediate, args.full_layers, args.heads, args.kv_heads), setting
    )
    print(f"\nestimate for {args.full_layers} layers: {full['total'] / GiB:.1f} GiB (of a T4's 15)")
    print(f"training peak measured/estimated = {measured['train']['peak'] / train_est:.2f}")


if __name__ == "__main__":
    main()
