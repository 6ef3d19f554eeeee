"""Study wall time with 1, 2 and 4 workers on one SQLite study, sleep-based objective.

Each worker is a separate process running the project's scheduling loop (claim lock,
GridPointSampler, heartbeat storage) - the same path as `run --workers N` - on a grid
whose trials each sleep a fixed time, so the ideal speedup is exactly N. Wall time runs
from starting the workers to the last one exiting (process start-up included).

    python benchmarks/parallel_throughput.py [--grid 12] [--sleep 2]
    python benchmarks/parallel_throughput.py --smoke   # 4 points x 0.2 s, 1 and 2 workers (seconds)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import grid_worker  # noqa: E402


def wall(workers: int, grid: int, sleep: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'p.db'}"
        grid_worker.create(url, grid, "throughput")
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "grid_worker.py"), url, str(grid), f"fixed:{sleep}", "throughput"]
            )
            for _ in range(workers)
        ]
        if any(p.wait() for p in procs):
            sys.exit("a worker failed")
        elapsed = time.perf_counter() - t0
        trials = optuna.load_study(study_name="throughput", storage=url).get_trials()
        counts = Counter(t.params["lora_r"] for t in trials)
        assert len(trials) == grid and set(counts.values()) == {1}, "a grid point ran twice or not at all"
        return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--sleep", type=float, default=2.0)
    ap.add_argument("--smoke", action="store_true", help="4 points x 0.2 s, 1 and 2 workers: seconds")
    args = ap.parse_args()
    if args.smoke:
        args.grid, args.sleep = 4, 0.2
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    times = {n: wall(n, args.grid, args.sleep) for n in ((1, 2) if args.smoke else (1, 2, 4))}
    print(f"{args.grid} grid points x {args.sleep:g} s sleep each (ideal serial time {args.grid * args.sleep:g} s)")
    for n, t in times.items():
        print(f"  {n} worker(s): {t:6.2f} s  speedup {times[1] / t:.2f} (ideal {n})")
    if 4 in times:
        print(f"speedup at 4 workers = {times[1] / times[4]:.2f}")
    print(f"speedup at 2 workers = {times[1] / times[2]:.2f}")


if __name__ == "__main__":
    main()
