"""Benchmarks that cannot rot silently: the ones that run in seconds are run here to
their last line, in their documented form (never asserting the figure's value)."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_hub_budget_runs_to_its_verdict_line():
    proc = subprocess.run([sys.executable, str(BENCH / "hub_budget.py"), "--smoke"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"hub_budget: (\w+ [\w/]+=[\d.]+\w* (PASS|FAIL)(; )?)+", last), last
    assert "bucket" in proc.stdout and "repo" in proc.stdout


def test_search_efficiencys_halving_replay_uses_the_schedules_actions():
    """The replay of this project's successive halving on given curves (it crashed once
    when the schedule's actions were renamed)."""
    sys.path.insert(0, str(BENCH))
    try:
        import search_efficiency as se
    finally:
        sys.path.remove(str(BENCH))

    class Curves:
        keys = ["a", "b", "c", "d"]
        acc = {"a": [0.1, 0.5], "b": [0.2, 0.6], "c": [0.3, 0.7], "d": [0.1, 0.2]}
        best = 0.7

        def at(self, metric, key, fraction):
            return self.acc[key][-1] * fraction

    run = se.halving_strategy(Curves(), "accuracy", rungs=[0.5, 1.0], eta=2)
    assert run.best == 0.7 and run.spent == 0.75  # four to 1/2, the best two to the end


def test_study_overhead_runs_to_its_ratio_line():
    proc = subprocess.run([sys.executable, str(BENCH / "study_overhead.py"), "--smoke"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.fullmatch(r"overhead ratio = \d+\.\d\d", proc.stdout.strip().splitlines()[-1]), proc.stdout
