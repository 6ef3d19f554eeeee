"""The demo's model, built locally and deterministically on first use.

``builtin:tiny-mistral``: a Mistral-architecture model with a 64-wide hidden state and a
byte-level BPE tokenizer (with a Mistral-Instruct chat template) trained on the demo
texts. It is briefly pre-trained as a language model on the report *texts* (never on the
labels) so that, like a real base model, it knows the language but not the task; LoRA
then has to learn the task. Cached beside the demo data (``_demo_data``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from optuna_search.objectives._cache import new_build_dir, publish
from optuna_search.objectives._data import Example, parse_label_lines
from optuna_search.objectives._demo_data import cache_dir, ensure_demo_data
from optuna_search.objectives._prompt import PromptEncoder

# Mistral-Instruct's format, so the demo exercises the flagship study's prompt.
DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def ensure_demo_model() -> Path:
    """Build (once) and return the directory of the tiny demo model and its tokenizer."""
    root = cache_dir() / "tiny-mistral"
    if (root / "config.json").exists() and (root / "tokenizer.json").exists():
        return root
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    data = ensure_demo_data()
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    corpus = [f"{r['instruction']}\n\n{r['input']}\n{r['output']}" for r in rows]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_bos_token = True  # type: ignore[misc]  # settable at run time; the stubs say read-only
    tokenizer.chat_template = DEMO_CHAT_TEMPLATE

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = MistralForCausalLM(cfg)
    _pretrain(model, tokenizer, rows)

    tmp = new_build_dir(root)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(
        "Tiny demo model built by optuna-search. Randomly initialised Mistral architecture,\n"
        "briefly pre-trained on synthetic report texts. Not a real language model.\n"
    )
    publish(tmp, root)
    return root


def _pretrain(model, tokenizer, rows: list[dict], epochs: int = 3, batch_size: int = 16) -> None:
    """Pre-train as a language model on the prompt format with *shuffled* labels: the
    model learns the language, the answer format and the label words (as a real
    instruction-tuned model knows them) but nothing of which label fits which report,
    because each report is paired with another report's labels. A few seconds on CPU."""
    import torch

    fields = ["severity", "component", "reproducibility"]
    rng = random.Random(0)
    labels: list[dict[str, str]] = [parse_label_lines(r["output"], fields) for r in rows]  # type: ignore[misc]  # every demo row has all labels
    rng.shuffle(labels)
    examples = [Example(str(i), r["instruction"], r["input"], lab, i) for i, (r, lab) in enumerate(zip(rows, labels))]
    vocab = {f: sorted({lab[f] for lab in labels}) for f in fields}
    encoder = PromptEncoder(tokenizer, fields, vocab, max_length=256)
    seqs = [encoder.encode(e).input_ids for e in examples]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = [seqs[j] for j in order[i : i + batch_size]]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels_t = torch.full((len(batch), width), -100)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                labels_t[row, : len(seq)] = torch.tensor(seq)
            loss = model(input_ids=ids, attention_mask=(labels_t != -100).long(), labels=labels_t).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
