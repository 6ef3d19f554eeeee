"""Optimizer steps a Bayesian search with early stopping needs to find what the full
grid finds, on the demo model and data.

A 12-point space (4 ranks x 3 learning rates). The full grid runs once: its best
validation accuracy is the reference and its optimizer steps the cost. Then TPE +
Hyperband (pruning on validation accuracy) runs 12 trials over the same space, once per
seed. Per seed: the best validation accuracy it found, the optimizer steps it spent, and
the steps it had spent when it first came within 1 point of the grid's best.

    python benchmarks/search_efficiency.py [--seeds 5] [--epochs 2] [--train-samples 600]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

RANKS = [4, 8, 16, 32]
RATES = [2e-3, 5e-3, 1e-2]


def run(work: Path, name: str, *sets: str, common: list[str]) -> list:
    cmd = [sys.executable, "-m", "optuna_search.search._cli", "-q", "run", "--preset", "demo-search", "--study-name", name,
           *common, *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    return sorted(study.get_trials(), key=lambda t: t.number)


def best_validation(trials) -> float:
    return max(t.user_attrs["validation_overall_accuracy"] for t in trials
               if t.state.name == "COMPLETE" and "validation_overall_accuracy" in t.user_attrs)


def steps_to_reach(trials, target: float) -> int | None:
    spent = 0
    for t in trials:
        spent += t.user_attrs.get("optimizer_steps", 0)
        if t.state.name == "COMPLETE" and t.user_attrs.get("validation_overall_accuracy", -1) >= target:
            return spent
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-samples", type=int, default=600)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = f"{{lora_r={RANKS}, learning_rate={RATES}}}"
    common = ["--set", f"train.epochs={args.epochs}", "--set", f"data.train_samples={args.train_samples}"]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        grid = run(work, "grid", "study.sampler='grid'", f"study.grid={space}", "study.search_space={}", "study.n_trials=0",
                   "study.pruner='none'", common=common)
        reference = best_validation(grid)
        grid_steps = sum(t.user_attrs["optimizer_steps"] for t in grid)
        print(f"grid: {len(grid)} trials, best validation accuracy {100 * reference:.1f}%, {grid_steps} optimizer steps")
        ratios = []
        for seed in range(args.seeds):
            trials = run(work, f"tpe-{seed}", f"study.search_space={space}", "study.n_trials=12", f"study.seed={seed}", common=common)
            spent = sum(t.user_attrs.get("optimizer_steps", 0) for t in trials)
            reach = steps_to_reach(trials, reference - 0.01)
            pruned = sum(t.state.name == "PRUNED" for t in trials)
            ratios.append((reach if reach is not None else float("inf")) / grid_steps)
            print(f"seed {seed}: best validation {100 * best_validation(trials):.1f}%, {spent} steps spent ({pruned} pruned), "
                  f"within 1 point of the grid's best after {reach if reach is not None else 'never'} steps")
    print(f"steps to reach the grid's best within 1 point / grid steps = {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
