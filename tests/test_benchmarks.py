"""Benchmarks that cannot rot silently: every script in benchmarks/ runs here at its smoke
size (``--smoke``) to its last line, which must print its figure in the documented form
(never asserting the figure's value); gpu_check.sh's Python side is imported."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import GAME_BUGS, MISTRAL_TOKENIZER

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
NUM = r"\d+\.\d+"
SMOKES = {
    "eval_speed.py": ([], rf"score vs naive: speedup = {NUM}"),
    "predict_speed.py": ([], rf"predict vs evaluation: rows/s ratio = {NUM}"),
    "parallel_throughput.py": ([], rf"speedup at 2 workers = {NUM}"),
    "remote_sync.py": (["--no-s3"], rf"sync overhead ratio \(trial time\) = {NUM}"),
    "resume_waste.py": ([], rf"redone/total = {NUM}"),
    "t4_memory.py": ([], rf"training peak measured/estimated = {NUM}"),
    "search_efficiency.py": (
        [],
        rf"default strategy \(adaptive successive halving \(label_logprob\), rungs 1/4, 1/2, 1, eta 2\): worst compute "
        rf"ratio to Optuna's best native strategy over 1 space = ({NUM}|inf) \(smoke\)",
    ),
}


def _smoke(script: str, *extra: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_benchmark_has_a_smoke_test():
    scripts = {p.name for p in BENCH.glob("*.py")}
    tested = set(SMOKES) | {"hub_budget.py", "study_overhead.py", "train_tokens.py"}
    assert scripts == tested, f"benchmarks without a smoke run here: {sorted(scripts - tested)}"


@pytest.mark.parametrize("script", sorted(SMOKES))
def test_a_benchmark_runs_to_its_last_line_at_smoke_size(script, demo_cache, tmp_path):
    extra, last_line = SMOKES[script]
    out = _smoke(script, *extra, env={"TMPDIR": str(tmp_path)})
    assert re.fullmatch(last_line, out.strip().splitlines()[-1]), out[-1500:]


def test_train_tokens_runs_to_its_last_line_on_the_real_reports():
    assert GAME_BUGS.exists() and MISTRAL_TOKENIZER.exists()  # (skipped, with the reason, where ../shared is absent)
    out = _smoke("train_tokens.py")
    assert re.fullmatch(rf"padded/floor = {NUM}", out.strip().splitlines()[-1]), out


def test_gpu_checks_python_side_imports_and_collects():
    """gpu_check.sh runs on a GPU machine only; what it imports and the tests it runs are
    checked here, so a rename breaks CI, not the one GPU session."""
    import importlib

    script = (BENCH / "gpu_check.sh").read_text()
    modules = re.search(r"for m in \((.*?)\):", script).group(1)
    for name in re.findall(r'"([\w.]+)"', modules):
        importlib.import_module(name)
    tests = re.search(r"pytest -m gpu .*?((?:tests/\S+ ?)+)", script).group(1).split()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", *tests],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0 and re.search(r"\d+ tests? collected|\d+/\d+ tests collected", proc.stdout), (
        proc.stdout[-2000:]
    )


def test_hub_budget_runs_to_its_verdict_line():
    out = _smoke("hub_budget.py")
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"hub_budget: (\w+ [\w/]+=[\d.]+\w* (PASS|FAIL)(; )?)+", last), last
    assert "bucket" in out and "repo" in out


def test_search_efficiencys_halving_replay_uses_the_schedules_actions():
    """The replay of this project's successive halving on given curves (it crashed once
    when the schedule's actions were renamed)."""
    sys.path.insert(0, str(BENCH))
    try:
        import search_efficiency as se
    finally:
        sys.path.remove(str(BENCH))

    class Curves:
        keys: ClassVar = ["a", "b", "c", "d"]
        acc: ClassVar = {"a": [0.1, 0.5], "b": [0.2, 0.6], "c": [0.3, 0.7], "d": [0.1, 0.2]}
        best = 0.7

        def at(self, metric, key, fraction):
            return self.acc[key][-1] * fraction

    run = se.halving_strategy(Curves(), "accuracy", rungs=[0.5, 1.0], eta=2)
    assert run.best == 0.7 and run.spent == 0.75  # four to 1/2, the best two to the end


def test_study_overhead_runs_to_its_ratio_line():
    out = _smoke("study_overhead.py")
    assert re.fullmatch(r"overhead ratio = \d+\.\d\d", out.strip().splitlines()[-1]), out


def test_search_efficiency_takes_any_grid_and_reads_p90_from_the_seeds():
    """``--space`` takes a grid as ``study.grid`` is written, checked by the project's own
    configuration; the compute a strategy needs for P >= 0.9 is read from its seeds, with
    an interval over them; where the winner stands by the rung's metric is counted."""
    sys.path.insert(0, str(BENCH))
    try:
        import search_efficiency as se
    finally:
        sys.path.remove(str(BENCH))
    from optuna_search.core import UserError

    space, preset, _, _ = se.parse_space("{lora_r=[4, 16], learning_rate=[1e-3, 3e-3]}", "demo-search")
    assert space == {"lora_r": [4, 16], "learning_rate": [1e-3, 3e-3]} and preset == "demo-search"
    with pytest.raises(UserError, match="lora_rank"):
        se.parse_space("{lora_rank=[4, 16]}", "demo-search")
    assert se.parse_space("demo", "demo-search")[0] == se.DEMO
    # 10 seeds: reached at 0.1 .. 0.8 in 8 of them, never in 2 -> P >= 0.9 is never met.
    reached = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, None, None]
    assert se.compute_at(reached) == float("inf") and se.compute_at(reached, p=0.8) == 0.8
    assert se.compute_at([0.3] * 9 + [None]) == 0.3
    # The ratio's interval over the seeds (bootstrap): the default against the lowest of
    # Optuna's strategies on each draw. Always at half the native's compute: exactly 0.5.
    rows = {
        "GP, no repeats, no pruning": {"reached_all": [0.8] * 20},
        "TPE + Hyperband (accuracy), as before": {"reached_all": [0.9] * 20},
        se.DEFAULT_STRATEGY: {"reached_all": [0.4] * 20},
    }
    assert se.ratio_interval(rows, se.DEFAULT_STRATEGY) == (0.5, 0.5)
    # A default that misses in 3 seeds of 20 is "never" on the draws that take 3 of them
    # or more, and 0.5 on those that take none: the interval spans both.
    rows[se.DEFAULT_STRATEGY]["reached_all"] = [0.4] * 17 + [None] * 3
    assert se.ratio_interval(rows, se.DEFAULT_STRATEGY) == (0.5, float("inf"))

    # Where the winner stands by the label log-prob at each point of training: here the
    # end's winner (lora_r=16) is last at 1/8 to 1/2 of training and first at 3/4.
    def point(r, lp_early, lp_late, right):
        curve = [
            {
                "fraction": f,
                "correct": [[right if f == 1.0 else 0]] * 4,
                "logprob": [lp_early if f < 0.7 else lp_late] * 4,
            }
            for f in (0.125, 0.25, 1 / 3, 0.5, 0.75, 1.0)
        ]
        return {"params": {"lora_r": r}, "curve": curve}

    data = {"points": {"lora_r=4": point(4, -1.0, -2.0, 0), "lora_r=8": point(8, -1.5, -2.5, 0)}}
    data["points"]["lora_r=16"] = point(16, -3.0, -0.5, 1)
    # Ordered by 1/8 to 1/2 it is the third to finish (the whole grid); by 3/4, the first.
    ranks = se.signal_ranks(data, seeds=5)
    assert [r[:3] for r in ranks] == [(0.125, 3, 3), (0.25, 3, 3), (1 / 3, 3, 3), (0.5, 3, 3), (0.75, 1, 1)]
    assert [r[3] for r in ranks] == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.75 + 0.25 / 3])
    a = se.curves_path({"lora_r": [4]}, "demo-search", ["train.epochs=1"], 9)
    assert (
        a
        == se.curves_path({"lora_r": [4]}, "demo-search", ["train.epochs=1"], 9)
        != se.curves_path({"lora_r": [8]}, "demo-search", ["train.epochs=1"], 9)
    )
    # The resolved schedule is part of the key: the same overrides on another schedule
    # are another grid.
    assert a != se.curves_path({"lora_r": [4]}, "demo-search", ["train.epochs=1", "train.lr_scheduler='cosine'"], 9)


def test_search_efficiency_decides_a_rung_on_the_cool_down_scores_and_charges_the_branch():
    """Given curves where the configuration that looks best at the rung's peak learning
    rate is not the one that is best after a cool-down (nor at the end), halving on the
    cool-down scores promotes the latter, and pays for the branches."""
    sys.path.insert(0, str(BENCH))
    try:
        import search_efficiency as se
    finally:
        sys.path.remove(str(BENCH))

    def point(before: int, after: int, end: int) -> dict:
        def at(fraction, right):
            return {"fraction": fraction, "correct": [[1]] * right + [[0]] * (10 - right), "logprob": [0.0] * 10}

        return {
            "params": {},
            "steps": 100,
            "curve": [at(0.25, before), at(1.0, end)],
            "cooldown": [{**at(0.25, after), "cost": 0.05}],
        }

    data = {"points": {"a": point(8, 5, 5), "b": point(6, 9, 9), "c": point(4, 3, 4), "d": point(3, 2, 3)}}
    curves = se.Curves(data, seed=-1)  # every validation example once
    assert curves.has_cooldown and curves.cooled_metric("accuracy", "b", 0.25) == 0.9
    plain = se.halving_strategy(curves, "accuracy", [0.25, 1.0], 4)
    cooled = se.halving_strategy(curves, "accuracy", [0.25, 1.0], 4, cooldown=True)
    assert plain.best == 0.5 and cooled.best == 0.9  # "a" went on before the cool-down, "b" after it
    # Four to 1/4, one finalist to the end; the branches add 0.05 each (four of them).
    assert plain.spent == pytest.approx((4 * 0.25 + 0.75) / 4)
    assert cooled.spent == pytest.approx((4 * 0.25 + 4 * 0.05 + 0.75) / 4)


@pytest.mark.parametrize(
    "space, needle",
    [("{lora_r=[4,16", "must be a table"), ("{lora_r=[4]}", "has 1 point: a search needs at least two")],
)
def test_search_efficiency_refuses_a_space_it_cannot_search_in_one_line(space, needle):
    """Seen: `--space '{lora_r=[4,16'` ended in a traceback; a one-point space printed
    `rho = +nan`."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "search_efficiency.py"), "--space", space, "--no-live"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
