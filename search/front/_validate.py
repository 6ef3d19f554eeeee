"""`optuna-search validate`: everything `run` checks before it loads a model, plus what
the prompt does to the data, printed for a person to read."""

from __future__ import annotations

import sys

from optuna_search.core import EXTRA, Config, pct
from optuna_search.objectives import (
    T4_USABLE_BYTES,
    GiB,
    PromptEncoder,
    Setting,
    Shape,
    estimate,
    load_tokenizer,
    model_source,
    quality_warnings,
    render_distribution,
)
from optuna_search.search.setup import preflight


def validate(config: Config) -> str:
    pf = preflight(config, here=False)
    ds = pf.data.dataset
    lines = [
        f"data ok: train {len(ds.train.examples)}, validation {len(ds.validation.examples)}, test "
        f"{len(ds.test.examples)} examples"
    ]
    lines.append("label vocabularies (every validation/test label occurs in train):")
    lines += [f"  {f}: {len(ds.vocab[f])} labels: {', '.join(ds.vocab[f])}" for f in ds.fields]
    lines += ["class distribution:", render_distribution(pf.quality)]
    for w in quality_warnings(pf.quality):
        print(f"warning: {w}", file=sys.stderr)
    lines.append(prompt_lengths(config, pf.data.dataset))
    lines.append(memory_line(config))
    lines.append(
        f"evaluation subsets: {len(pf.data.test_subset)} test examples, {len(pf.data.validation_subset)} "
        "validation examples (seed "
        f"{config.eval.seed}{', stratified by label combination' if config.eval.stratify else ''})"
    )
    for split, baselines in (("test", pf.baselines), ("validation", pf.validation_baselines)):
        lines.append(f"baselines on the {split} subset:")
        lines += [
            f"  {name}: "
            + ", ".join(f"{k} {pct(b[k])}" for k in [*ds.fields, "overall"])
            + "; "
            + ", ".join(f"{m.title} {m.show(m.in_baseline(b))}" for m in EXTRA)
            for name, b in baselines.items()
        ]
    return "\n".join(lines)


def prompt_lengths(config: Config, ds) -> str:
    """How the configured model's prompt treats the data: reports cut at
    model.max_length (per split), cut at load time, and the longest answer in tokens."""
    tokenizer = load_tokenizer(model_source(config.model), config.model)
    encoder = PromptEncoder(tokenizer, ds.fields, ds.vocab, config.model.max_length)
    parts = []
    for name, split in ds.splits.items():
        cut = sum(encoder.encode_prompt(e)[1] > 0 for e in split.examples)
        parts.append(
            f"{name} {cut}/{len(split.examples)}"
            + (f" ({split.cut_inputs} cut at load time)" if split.cut_inputs else "")
        )
    return (
        f"prompt ({config.model.chat_template} chat template, model.max_length {config.model.max_length}): reports "
        f"truncated: {', '.join(parts)}; longest possible answer {encoder.max_answer_tokens} tokens"
    )


def memory_line(config: Config) -> str:
    """The estimated accelerator memory of the study's largest configuration (largest
    batch, rank and evaluation batch), against a T4's 15 GiB; a warning when it cannot fit."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(
        model_source(config.model),
        revision=config.model.revision or None,
        trust_remote_code=config.model.trust_remote_code,
    )
    worst = max(
        (config.trial_params(p) for p in config.grid_points()) if config.is_grid else [config.trial_params({})],
        key=lambda t: (t.batch_size, t.lora_r),
    )
    setting = Setting(
        batch_size=worst.batch_size,
        max_length=config.model.max_length,
        lora_r=worst.lora_r,
        target_modules=tuple(worst.target_modules),
        gradient_checkpointing=config.train.gradient_checkpointing,
        optim=worst.optim,
        quantization=config.model.quantization,
        double_quant=config.model.double_quant,
        compute_bytes=4 if config.model.compute_dtype == "float32" else 2,
        eval_batch_size=config.eval.batch_size,
    )
    parts = estimate(Shape.of(hf), setting)
    line = (
        f"GPU memory per trial (estimate for batch {setting.batch_size}, r={setting.lora_r}, {setting.max_length} "
        f"tokens): {parts['total'] / GiB:.1f} GiB (weights {parts['weights'] / GiB:.1f}, activations "
        f"{parts['activations'] / GiB:.1f}, evaluation cache {parts['evaluation KV cache'] / GiB:.1f}); a T4 has "
        f"{T4_USABLE_BYTES / GiB:.0f} GiB"
    )
    if parts["total"] > T4_USABLE_BYTES:
        print(
            f"warning: this configuration needs about {parts['total'] / GiB:.1f} GiB of GPU memory, more than a T4's "
            f"{T4_USABLE_BYTES / GiB:.0f} GiB: lower train.batch_size (raise train.gradient_accumulation to keep the "
            "effective batch), model.max_length or eval.batch_size, or set train.gradient_checkpointing = true",
            file=sys.stderr,
        )
    return line
