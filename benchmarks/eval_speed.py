"""Evaluation speed and accuracy: the project's evaluation versus the naive method.

Same tiny demo model (NF4 + LoRA, fine-tuned for one epoch on the demo data), same 100
fixed test examples:
- project: greedy decoding, batched (prompts sorted by length, left padding), at most
  the longest possible answer + 4 new tokens;
- naive (what the hand-run study did): one example at a time,
  ``generate(do_sample=True, temperature=0.7, max_new_tokens=256)``.

    python benchmarks/eval_speed.py [--batch 50]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()

    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    from optuna_search.objectives._data import load_dataset_from_config, resolve_eval_subset, select_eval_subset
    from optuna_search.objectives._metrics import parse_prediction, score_predictions
    from optuna_search.objectives._prompt import PromptEncoder
    from optuna_search.objectives._qlora import _Collator, generate_predictions, load_lora_model, load_tokenizer, resolve_model_source
    from optuna_search.search._config import load_config

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cfg = load_config(preset="demo")
    data = load_dataset_from_config(cfg.data)
    examples = resolve_eval_subset(data.test, select_eval_subset(data.test, cfg.eval.num_samples, cfg.eval.seed))
    source = resolve_model_source(cfg.model.name_or_path)
    tok = load_tokenizer(source, cfg.model)
    enc = PromptEncoder(tok, data.fields, data.vocab, cfg.model.max_length)
    set_seed(0)
    model, _ = load_lora_model(source, cfg.model, {"lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.0,
                                                  "target_modules": cfg.lora.target_modules}, False)
    targs = TrainingArguments(output_dir="/tmp/eval-speed", per_device_train_batch_size=8, num_train_epochs=1,
                              learning_rate=cfg.train.learning_rate, save_strategy="no", report_to=[], use_cpu=True,
                              disable_tqdm=True, remove_unused_columns=False, logging_strategy="no")
    trainer = Trainer(model=model, args=targs, train_dataset=enc.to_hf_dataset(data.train.examples),
                      data_collator=_Collator(DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.eval()

    t0 = time.perf_counter()
    ours = generate_predictions(model, tok, enc, examples, args.batch, data.fields)
    t_ours = time.perf_counter() - t0

    def naive_eval(seed: int):
        set_seed(seed)
        preds, new_tokens = [], 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for e in examples:
                ids = torch.tensor([enc.encode_prompt(e)[0]])
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                                     max_new_tokens=256, pad_token_id=tok.pad_token_id)
                new_tokens += out.shape[1] - ids.shape[1]
                preds.append(parse_prediction(e, tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), data.fields))
        return time.perf_counter() - t0, preds, new_tokens

    t_naive, naive, new_tokens = naive_eval(0)
    _, naive2, _ = naive_eval(1)
    s_ours = score_predictions(ours, data.fields, data.vocab)
    again = score_predictions(generate_predictions(model, tok, enc, examples, args.batch, data.fields), data.fields, data.vocab)
    s_naive = score_predictions(naive, data.fields, data.vocab)
    s_naive2 = score_predictions(naive2, data.fields, data.vocab)
    print(f"{len(examples)} examples, tiny demo model (NF4 + LoRA r=8, 1 epoch), CPU")
    print(f"project (greedy, batch {args.batch}): {t_ours:6.2f}s  {len(examples) / t_ours:7.1f} ex/s  "
          f"overall {100 * s_ours.overall:.1f}% (again: {100 * again.overall:.1f}%)  parse failures {s_ours.parse_failures}")
    print(f"naive (sampled T=0.7, 1 at a time, 256 max new tokens; {new_tokens / len(examples):.0f} new tokens/example): "
          f"{t_naive:6.2f}s  {len(examples) / t_naive:7.1f} ex/s  overall {100 * s_naive.overall:.1f}% "
          f"(another seed: {100 * s_naive2.overall:.1f}%)  parse failures {s_naive.parse_failures}")
    print(f"speedup = {t_naive / t_ours:.1f}")


if __name__ == "__main__":
    main()
