"""`run --workers N`: N worker processes on one study, one GPU (group) each.

The parent checks the inputs and creates the study (so workers never race to create
it), then starts N worker processes, each pinned to its own GPU(s) through
``CUDA_VISIBLE_DEVICES``, with an argument list built from the resolved config: the
config itself travels as TOML on the worker's standard input (``--config -``; a
storage password never appears in a process list), and the worker's number as
``--worker N``. Workers coordinate only through the study's
storage (Optuna's own distributed mode) plus the claim lock; the parent relays their
progress lines, prefixed with the worker number, to one terminal. Ctrl-C reaches every
worker (same process group); a SIGTERM to the parent alone is passed on to them. Each
stops its trial, which stays resumable from its checkpoint, and the parent waits for all
of them before it returns.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

from optuna_search.core import Config, UserError, to_toml
from optuna_search.search.loop._signals import Terminated, handle_sigterm

log = logging.getLogger("optuna_search")


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not os.path.exists("/proc/driver/nvidia") and shutil.which("nvidia-smi") is None:
        return []  # no NVIDIA driver: no CUDA device, and no need to import torch to say so
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def choose_workers(requested: int | None, gpus_per_trial: int, *, oversubscribe: bool = False) -> int:
    """One worker per visible GPU group by default, 1 on CPU; a request above what the
    machine has (GPU groups, or CPU cores without a GPU) is capped unless
    ``oversubscribe``, and the choice is logged."""
    if requested is not None and requested < 1:
        raise UserError(f"--workers {requested} must be at least 1")
    gpus = visible_gpus()
    cap = len(gpus) // gpus_per_trial if gpus else (os.cpu_count() or 1)
    if gpus and cap < 1:
        raise UserError(f"train.gpus_per_trial = {gpus_per_trial} but only {len(gpus)} GPU(s) are visible")
    if requested is None:
        return max(1, cap) if gpus else 1
    if requested > cap and not oversubscribe:
        what = f"{len(gpus)} GPU(s) / {gpus_per_trial} per trial" if gpus else f"{cap} CPU cores and no GPU"
        log.warning(
            "--workers %d capped at %d (this machine has %s); pass --oversubscribe to start more anyway",
            requested,
            cap,
            what,
        )
        return cap
    return requested


def worker_env(index: int, gpus: list[str], gpus_per_worker: int = 1) -> dict[str, str]:
    """Environment of worker ``index``: pinned to its own GPU(s) when there are GPUs."""
    env = dict(os.environ)
    if gpus:
        start = (index * gpus_per_worker) % len(gpus)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[start : start + gpus_per_worker])
    return env


@dataclass(frozen=True)
class WorkerOptions:
    """What the parent's `run` passes on to each worker, besides the config."""

    retry_failed: bool = False
    time_budget_s: float | None = None
    progress_interval: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    """Added to each worker's own environment (the run's remote lease), never to the parent's."""

    def args(self, index: int) -> list[str]:
        out = ["run", "--worker", str(index), "--config", "-"]
        if self.retry_failed:
            out.append("--retry-failed")
        if self.time_budget_s is not None:
            out += ["--time-budget", f"{self.time_budget_s}s"]
        if self.progress_interval is not None:
            out += ["--progress-interval", str(self.progress_interval)]
        return out


def run_workers(config: Config, n: int, options: WorkerOptions) -> list[int]:
    """Start n workers on the study of ``config``; relay their stderr; return their exit codes."""
    # The parent trains nothing: a SIGTERM must reach the workers at once (they each
    # checkpoint within their grace time), not after the parent's own grace timer.
    handle_sigterm(graceful=False)
    gpus = visible_gpus()
    cpu_share = max(1, (os.cpu_count() or 1) // n)
    procs, envs = [], []
    config_toml = to_toml(config)
    for i in range(n):
        env = {**worker_env(i, gpus, config.train.gpus_per_trial), **dict(options.env)}
        # CPU-only workers share the cores instead of each grabbing all of them.
        env.setdefault("OMP_NUM_THREADS", str(cpu_share))
        envs.append(env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "optuna_search.search", *options.args(i)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        proc.stdin.write(config_toml)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        procs.append(proc)
    lock = threading.Lock()

    def relay(i: int, stream) -> None:
        prefix = f"[worker {i}{' gpu ' + envs[i]['CUDA_VISIBLE_DEVICES'] if gpus else ''}] "
        for line in stream:
            with lock:
                sys.stderr.write(prefix + line)
                sys.stderr.flush()

    threads = [threading.Thread(target=relay, args=(i, p.stderr), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt as e:
        # Ctrl-C reached the workers too (same process group); a SIGTERM sent to the
        # parent alone did not: pass it on. Then let them finish cleanly.
        if isinstance(e, Terminated):
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        for t in threads:
            t.join(timeout=5)
        raise
    for t in threads:
        t.join(timeout=5)
    return codes
