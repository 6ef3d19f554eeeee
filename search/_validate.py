"""`optuna-search validate`: everything `run` checks before it loads a model, plus what
the prompt does to the data, printed for a person to read."""

from __future__ import annotations

import sys

from optuna_search.core import Config
from optuna_search.core._text import pct
from optuna_search.objectives._model import load_tokenizer, model_source
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._quality import quality_warnings, render_distribution
from optuna_search.search._preflight import preflight


def validate(config: Config) -> str:
    pf = preflight(config, here=False)
    ds = pf.data.dataset
    lines = [f"data ok: train {len(ds.train.examples)}, validation {len(ds.validation.examples)}, test {len(ds.test.examples)} examples"]
    lines.append("label vocabularies (every validation/test label occurs in train):")
    lines += [f"  {f}: {len(ds.vocab[f])} labels: {', '.join(ds.vocab[f])}" for f in ds.fields]
    lines += ["class distribution:", render_distribution(pf.quality)]
    for w in quality_warnings(pf.quality):
        print(f"warning: {w}", file=sys.stderr)
    lines.append(prompt_lengths(config, pf.data.dataset))
    lines.append(f"evaluation subsets: {len(pf.data.test_subset)} test examples, {len(pf.data.validation_subset)} "
                 f"validation examples (seed {config.eval.seed}{', stratified by label combination' if config.eval.stratify else ''})")
    for split, baselines in (("test", pf.baselines), ("validation", pf.validation_baselines)):
        lines.append(f"baselines on the {split} subset:")
        lines += [f"  {name}: " + ", ".join(f"{k} {pct(b[k])}" for k in [*ds.fields, "overall"])
                  + f"; macro-F1 {b['macro_f1']:.3f}, balanced accuracy {pct(b['balanced_accuracy'])}"
                  for name, b in baselines.items()]
    return "\n".join(lines)


def prompt_lengths(config: Config, ds) -> str:
    """How the configured model's prompt treats the data: reports cut at
    model.max_length (per split), cut at load time, and the longest answer in tokens."""
    tokenizer = load_tokenizer(model_source(config.model), config.model)
    encoder = PromptEncoder(tokenizer, ds.fields, ds.vocab, config.model.max_length)
    parts = []
    for name, split in ds.splits.items():
        cut = sum(encoder.encode_prompt(e)[1] > 0 for e in split.examples)
        parts.append(f"{name} {cut}/{len(split.examples)}" + (f" ({split.cut_inputs} cut at load time)" if split.cut_inputs else ""))
    return (f"prompt ({config.model.chat_template} chat template, model.max_length {config.model.max_length}): reports "
            f"truncated: {', '.join(parts)}; longest possible answer {encoder.max_answer_tokens} tokens")
