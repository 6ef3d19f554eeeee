"""`run --workers N`: N worker processes on one study, one GPU each.

The parent checks the inputs and creates the study (so workers never race to create
it), then starts N copies of the same `run` command with ``--worker``, each pinned to its
own GPU through ``CUDA_VISIBLE_DEVICES``. Workers coordinate only through the study's
storage (Optuna's own distributed mode) plus the claim lock; the parent relays their
progress lines, prefixed with the worker number, to one terminal. Ctrl-C reaches every
worker (same process group): each stops its trial, which stays resumable from its
checkpoint, and the parent waits for all of them before it returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Sequence

from optuna_search.storage._claim import worker_env


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: CPU
        return []


def default_workers(gpus_per_trial: int = 1) -> int:
    """One worker per visible GPU (per gpus_per_trial GPUs), 1 on CPU."""
    return max(1, len(visible_gpus()) // gpus_per_trial)


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The parent's `run` arguments minus what only the parent does."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--resume-from"):
            skip = True
            continue
        if a.startswith(("--workers=", "--resume-from=")):
            continue
        out.append(a)
    return out + ["--worker"]


def run_workers(argv: Sequence[str], n: int, gpus_per_trial: int = 1) -> list[int]:
    """Start n workers with the given `run` arguments; relay their stderr; return their
    exit codes."""
    gpus = visible_gpus()
    cpu_share = max(1, (os.cpu_count() or 1) // n)
    procs, envs = [], []
    for i in range(n):
        env = worker_env(i, gpus, gpus_per_trial)
        # CPU-only workers share the cores instead of each grabbing all of them.
        env.setdefault("OMP_NUM_THREADS", str(cpu_share))
        envs.append(env)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "optuna_search.search._cli", *worker_argv(argv)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
        ))
    lock = threading.Lock()

    def relay(i: int, stream) -> None:
        for line in stream:
            with lock:
                sys.stderr.write(f"[worker {i}{' gpu ' + envs[i]['CUDA_VISIBLE_DEVICES'] if gpus else ''}] {line}")
                sys.stderr.flush()

    threads = [threading.Thread(target=relay, args=(i, p.stderr), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        # The terminal's Ctrl-C went to the workers too; let them finish cleanly.
        codes = [p.wait() for p in procs]
        for t in threads:
            t.join(timeout=5)
        raise
    for t in threads:
        t.join(timeout=5)
    return codes
