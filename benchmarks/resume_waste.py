"""Training steps done twice when a trial is killed (SIGKILL) mid-training and resumed.

Runs the demo study on one grid point, kills the process at several random steps, and
restarts it each time; the retry resumes from the grid point's last Trainer checkpoint.
Redone steps = the last step the killed process reported - the step the retry resumed
from. Goal: at most one checkpoint interval per kill.

    python benchmarks/resume_waste.py [--kills 3] [--checkpoint-steps 25]
    python benchmarks/resume_waste.py --smoke  # one kill in a 160-report epoch (seconds)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--checkpoint-steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="one kill, 160 training reports, one epoch: seconds")
    args = ap.parse_args()
    smoke = []
    if args.smoke:
        args.kills, args.checkpoint_steps = 1, 5
        smoke = [
            "--set",
            "data.train_samples=160",
            "--set",
            "train.epochs=1",
            "--set",
            "eval.num_samples=20",
            "--set",
            "eval.validation_samples=20",
        ]
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="resume-waste-"))
    env = dict(os.environ)
    cmd = [
        sys.executable,
        "-m",
        "optuna_search.search",
        "run",
        "--preset",
        "demo",
        "--progress-interval",
        "0",
        "--set",
        "study.grid={lora_r=[8]}",
        "--set",
        f"train.checkpoint_steps={args.checkpoint_steps}",
        "--set",
        "storage.heartbeat_interval=1",
        "--set",
        "storage.grace_period=2",
        *smoke,
    ]
    step_re = re.compile(r"step (\d+)/(\d+)")
    resume_re = re.compile(r"resuming from checkpoint .*\(step (\d+)\)")
    max_steps = None
    killed_at, resumed_from = [], []
    t0 = time.perf_counter()
    for k in range(args.kills):
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        start_step, target, last = None, None, None
        for line in proc.stderr:
            r = resume_re.search(line)
            if r:
                resumed_from.append(int(r.group(1)))
            m = step_re.search(line)
            if not m:
                continue
            step, max_steps = int(m.group(1)), int(m.group(2))
            if start_step is None:
                start_step = step
                # Kill somewhere in the rest of the run, away from its end.
                target = rng.randint(step + args.checkpoint_steps, min(max_steps - 5, step + 4 * args.checkpoint_steps))
            last = step
            if step >= target:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        killed_at.append(last)
        print(f"kill {k + 1}: SIGKILL at step {last}/{max_steps}", flush=True)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"final run failed:\n{proc.stderr[-2000:]}")
    r = resume_re.search(proc.stderr)
    resumed_from.append(int(r.group(1)) if r else 0)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    final = max(study.trials, key=lambda t: t.number)
    # Attempt k+1 resumed from the checkpoint that the killed attempt k left behind.
    redone = 0
    for k, last in enumerate(killed_at):
        redone += last - resumed_from[k]
        print(
            f"attempt {k + 2} resumed from step {resumed_from[k]}: {last - resumed_from[k]} steps redone "
            f"(checkpoint interval {args.checkpoint_steps})"
        )
    total = max_steps
    print(
        f"final trial: state {final.state.name}, resumed_from_step {final.user_attrs.get('resumed_from_step')}, "
        f"{len(study.trials)} attempts, value {final.value:.3f}; wall {time.perf_counter() - t0:.0f}s"
    )
    print(
        f"redone steps: {redone} over {args.kills} kills ({redone / args.kills:.1f} per kill; "
        f"goal <= {args.checkpoint_steps}); steps per trial {total}"
    )
    print(f"redone/total = {redone / total:.2f}")


if __name__ == "__main__":
    main()
