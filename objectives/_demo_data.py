"""The demo's synthetic bug reports, built locally and deterministically on first use.

``builtin:demo-bugs/{train,val,test}.jsonl``: synthetic bug reports whose labels are
driven by keywords in the text (with a little label noise), in the same format as the
real game-bugs data. Learnable, and the majority class is far from 100%. They land in
``$OPTUNA_SEARCH_CACHE`` (default ``~/.cache/optuna-search``); builds are written to a
temporary folder and renamed, so a killed build never leaves half-written files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from optuna_search.core import UserError
from optuna_search.objectives._cache import cache_root, new_build_dir, publish

DEMO_VERSION = "v2"  # v2: the tokenizer carries a Mistral-style chat template
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
    return cache_root() / "demo" / DEMO_VERSION


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
        rows.append(
            {"instruction": INSTRUCTION, "input": f"Title: {title}\n\nDescription: {' '.join(body)}", "output": output}
        )
    return rows


def ensure_demo_data() -> Path:
    root = cache_dir() / "demo-bugs"
    if all((root / f"{s}.jsonl").exists() for s in SPLIT_SIZES):
        return root
    tmp = new_build_dir(root)
    for i, (split, n) in enumerate(SPLIT_SIZES.items()):
        with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for j, row in enumerate(generate_reports(1000 + i, n)):
                fh.write(json.dumps({"id": f"demo-{split}-{j:04d}", **row}) + "\n")
    publish(tmp, root)
    return root
