"""The demo's model and data, built locally and deterministically on first use.

- ``builtin:demo-bugs/{train,val,test}.jsonl``: synthetic bug reports whose labels are
  driven by keywords in the text (with a little label noise), in the same format as the
  real game-bugs data. Learnable, and the majority class is far from 100%.
- ``builtin:tiny-mistral``: a Mistral-architecture model with a 64-wide hidden state and
  a byte-level BPE tokenizer trained on the demo texts. It is briefly pre-trained as a
  language model on the report *texts* (never on the labels) so that, like a real base
  model, it knows the language but not the task; LoRA then has to learn the task.

Everything lands in ``$OPTUNA_SEARCH_CACHE`` (default ``~/.cache/optuna-search``) and is
reused; builds are written to a temporary folder and renamed, so a killed build never
leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from optuna_search.search._errors import UserError

DEMO_VERSION = "v1"
SPLIT_SIZES = {"train": 1200, "val": 120, "test": 150}

SEVERITY = {
    "critical": ["crashes to desktop", "corrupts the save file", "segfault on start", "deletes all progress"],
    "high": ["freezes the game", "soft lock", "cannot finish the level", "progress is blocked"],
    "medium": ["glitch appears", "wrong value is shown", "flickers badly", "animation stutters"],
    "low": ["typo in text", "minor cosmetic issue", "slightly misaligned", "tooltip is odd"],
}
COMPONENT = {
    "ui": ["menu", "button", "inventory screen", "hud"],
    "audio": ["sound effect", "music track", "voice line", "audio mixer"],
    "graphics": ["shader", "texture", "shadow map", "lighting"],
    "network": ["multiplayer lobby", "server connection", "netcode", "matchmaking"],
    "save": ["save slot", "autosave", "load screen", "cloud save"],
    "gameplay": ["enemy ai", "jump physics", "quest script", "boss fight"],
}
REPRO = {
    "always": ["every time", "always happens", "reproducible 100%"],
    "sometimes": ["sometimes", "now and then", "about half the time"],
    "rare": ["happened once", "very rarely", "could not reproduce again"],
}
# Skewed priors, so the majority class is a real (but beatable) baseline.
PRIORS = {
    "severity": {"critical": 0.15, "high": 0.2, "medium": 0.4, "low": 0.25},
    "component": {"ui": 0.3, "audio": 0.1, "graphics": 0.2, "network": 0.1, "save": 0.1, "gameplay": 0.2},
    "reproducibility": {"always": 0.5, "sometimes": 0.3, "rare": 0.2},
}
FILLER = [
    "steps to reproduce are below",
    "tested on the latest build",
    "this started after the last update",
    "see attached log",
    "on windows and linux",
    "playing in fullscreen mode",
    "thanks for looking",
    "version 1.2 of the game",
]
PLACES = ["in the forest level", "in the main city", "after the tutorial", "during chapter two", "in co-op"]
INSTRUCTION = "Classify this bug report and provide a structured analysis."
LABEL_NOISE = 0.08


def cache_dir() -> Path:
    root = os.environ.get("OPTUNA_SEARCH_CACHE") or Path.home() / ".cache" / "optuna-search"
    return Path(root) / "demo" / DEMO_VERSION


def builtin_data_path(name: str) -> Path:
    files = {"demo-bugs/train.jsonl", "demo-bugs/val.jsonl", "demo-bugs/test.jsonl"}
    if name not in files:
        raise UserError(f"unknown builtin data file 'builtin:{name}'; available: {', '.join(sorted(files))}")
    root = ensure_demo_data()
    return root / name.split("/", 1)[1]


def _choose(rng: random.Random, prior: dict[str, float]) -> str:
    return rng.choices(list(prior), weights=list(prior.values()))[0]


def generate_reports(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        sev, comp, rep = (_choose(rng, PRIORS[f]) for f in ("severity", "component", "reproducibility"))
        thing = rng.choice(COMPONENT[comp])
        symptom = rng.choice(SEVERITY[sev])
        freq = rng.choice(REPRO[rep])
        title = f"{thing.capitalize()} {symptom}"
        body = [f"The {thing} {symptom} {rng.choice(PLACES)}.", f"It {freq}."]
        body += [f"{rng.choice(FILLER).capitalize()}." for _ in range(rng.randint(1, 3))]
        rng.shuffle(body)
        labels = {"severity": sev, "component": comp, "reproducibility": rep}
        # A little label noise, like real triage: the text does not always decide.
        for f, prior in PRIORS.items():
            if rng.random() < LABEL_NOISE:
                labels[f] = _choose(rng, prior)
        output = (
            f"Severity: {labels['severity']}\nComponent: {labels['component']}\n"
            f"Reproducibility: {labels['reproducibility']}\nSummary: {title}"
        )
        rows.append({"instruction": INSTRUCTION, "input": f"Title: {title}\n\nDescription: {' '.join(body)}", "output": output})
    return rows


def ensure_demo_data() -> Path:
    root = cache_dir() / "demo-bugs"
    if all((root / f"{s}.jsonl").exists() for s in SPLIT_SIZES):
        return root
    tmp = Path(tempfile.mkdtemp(dir=_mkparent(root)))
    for i, (split, n) in enumerate(SPLIT_SIZES.items()):
        with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for j, row in enumerate(generate_reports(1000 + i, n)):
                fh.write(json.dumps({"id": f"demo-{split}-{j:04d}", **row}) + "\n")
    _publish(tmp, root)
    return root


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
    tokenizer.add_bos_token = True

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

    tmp = Path(tempfile.mkdtemp(dir=_mkparent(root)))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(
        "Tiny demo model built by optuna-search. Randomly initialised Mistral architecture,\n"
        "briefly pre-trained on synthetic report texts. Not a real language model.\n"
    )
    _publish(tmp, root)
    return root


def _pretrain(model, tokenizer, rows: list[dict], epochs: int = 3, batch_size: int = 16) -> None:
    """Pre-train as a language model on the prompt format with *shuffled* labels: the
    model learns the language, the answer format and the label words (as a real
    instruction-tuned model knows them) but nothing of which label fits which report,
    because each report is paired with another report's labels. A few seconds on CPU."""
    import torch

    from optuna_search.objectives._data import Example, parse_label_lines
    from optuna_search.objectives._prompt import PromptEncoder

    fields = ["severity", "component", "reproducibility"]
    rng = random.Random(0)
    labels = [parse_label_lines(r["output"], fields) for r in rows]
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


def _mkparent(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    return root.parent


def _publish(tmp: Path, root: Path) -> None:
    # Another process may have finished the same build first: theirs is identical.
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
