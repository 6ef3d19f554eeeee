"""Evaluation speed and accuracy: the project's two evaluation methods versus the naive one.

Same tiny demo model (NF4 + LoRA r=8, fine-tuned for one epoch on the demo data), same
100 fixed test examples:
- generate: greedy decoding, batched (prompts sorted by length, left padding), at most
  the longest possible answer + 4 new tokens, stopping at the end-of-turn token;
- score: every label of each field's closed set scored as a continuation, the prompt's
  key/value cache reused for all candidates (gives label probabilities);
- naive (what the hand-run study did): one example at a time,
  ``generate(do_sample=True, temperature=0.7, max_new_tokens=256)``.

    python benchmarks/eval_speed.py [--batch 50]
    python benchmarks/eval_speed.py --smoke    # 8 examples, 4 training steps (seconds)

Last line: the speedup of label scoring over the naive evaluation.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="8 examples, 32 training examples, 16 new tokens: seconds")
    args = ap.parse_args()

    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    from optuna_search.objectives import (
        Collator,
        PromptEncoder,
        evaluate,
        load_lora_model,
        load_tokenizer,
        model_source,
        parse_prediction,
        prepare_study_data,
        score_predictions,
    )
    from optuna_search.search import load_config

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    smoke = ["data.train_samples=32", "eval.num_samples=8", "eval.validation_samples=8"] if args.smoke else []
    cfg = load_config(preset="demo", sets=smoke)
    max_new_tokens = 16 if args.smoke else 256
    sd = prepare_study_data(cfg.data, cfg.eval, train_seed=cfg.train.seed, max_length=cfg.model.max_length)
    data, examples = sd.dataset, sd.test_examples
    source = model_source(cfg.model)
    tok = load_tokenizer(source, cfg.model)
    enc = PromptEncoder(tok, data.fields, data.vocab, cfg.model.max_length)
    set_seed(0)
    model, _ = load_lora_model(source, cfg.model, cfg.trial_params({"lora_r": 8}), False)
    targs = TrainingArguments(
        output_dir="/tmp/eval-speed",
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=cfg.train.learning_rate,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        logging_strategy="no",
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=enc.to_hf_dataset(data.train.examples), data_collator=Collator(tok)
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.eval()

    runs = {
        m: [evaluate(model, tok, enc, examples, method=m, batch_size=args.batch) for _ in range(2)]
        for m in ("generate", "score")
    }

    def naive_eval(seed: int):
        set_seed(seed)
        preds, new_tokens = [], 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for e in examples:
                ids = torch.tensor([enc.encode_prompt(e)[0]])
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=0.7,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                )
                new_tokens += out.shape[1] - ids.shape[1]
                preds.append(
                    parse_prediction(e, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True), data.fields)
                )
        return time.perf_counter() - t0, preds, new_tokens

    t_naive, naive, new_tokens = naive_eval(0)
    _, naive2, _ = naive_eval(1)
    s_naive = score_predictions(naive, data.fields, data.vocab)
    s_naive2 = score_predictions(naive2, data.fields, data.vocab)
    n = len(examples)
    print(f"{n} examples, tiny demo model (NF4 + LoRA r=8, 1 epoch), CPU")
    best = {}
    for method, (first, again) in runs.items():
        best[method] = min(first.seconds, again.seconds)
        print(
            f"{method} (batch {args.batch}): {best[method]:6.2f}s  {n / best[method]:7.1f} ex/s  overall "
            f"{100 * first.scores.overall:.1f}% (again: {100 * again.scores.overall:.1f}%)  parse failures {first.scores.parse_failures}"
        )
    agree = sum(
        a.predicted == b.predicted for a, b in zip(runs["generate"][0].predictions, runs["score"][0].predictions)
    )
    print(f"score and generate choose the same labels on {agree}/{n} examples")
    print(
        f"naive (sampled T=0.7, 1 at a time, {max_new_tokens} max new tokens; {new_tokens / n:.0f} new tokens/example): "
        f"{t_naive:6.2f}s  {n / t_naive:7.1f} ex/s  overall {100 * s_naive.overall:.1f}% "
        f"(another seed: {100 * s_naive2.overall:.1f}%)  parse failures {s_naive.parse_failures}"
    )
    print(f"score vs generate: speedup = {best['generate'] / best['score']:.1f}")
    print(f"generate vs naive: speedup = {t_naive / best['generate']:.1f}")
    print(f"score vs naive: speedup = {t_naive / best['score']:.1f}")


if __name__ == "__main__":
    main()
