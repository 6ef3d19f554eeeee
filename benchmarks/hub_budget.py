"""The flagship's Kaggle session against the Hugging Face Hub's limits, on a simulated clock.

Three points (LoRA r = 4, 8, 16), two workers (Kaggle's 2x T4), about two hours a trial
(3 epochs of ~83 optimizer steps, a checkpoint every 20 steps as the kaggle-t4 preset
says: about every 29 minutes... scaled to the plan's 2 h a trial: 12.5 checkpoints, one
every ~9.6 min), the run's process renewing the lease, each worker pushing its point.
The remote is real code (``Remote``, ``StudySync``, the shared ``CommitBudget`` and the
uploader's ``Cadence.decide``) over a ``SimulatedHub`` that enforces the Hub's documented
limits on the simulated clock; checkpoint files are real files at 1/1000 of their size
(r = 16: 55 MB adapter + 27 MB optimizer state -> 82 KB), which leaves every ratio as it is.

For a Storage Bucket (``hf://buckets/...``) and a dataset repo (``hf://datasets/...``):
the most commits in any rolling hour, the most requests in any 5 minutes, the 429s met,
the repo's history bytes over its live bytes, and the remote's lag: at a kill at any
instant, how far the newest checkpoint in the remote is behind the newest one on disk,
and how much training a fresh machine would redo.

    python benchmarks/hub_budget.py            # the whole session (about a minute)
    python benchmarks/hub_budget.py --smoke    # one point, a few checkpoints (seconds)

Targets (issue 31): no 429; commits in any hour <= 60 on a repo; history <= 2x live; lag
<= one checkpoint interval plus the commit interval. The last line: PASS or FAIL per target.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from optuna_search.storage import (
    Cadence,
    CommitBudget,
    Lease,
    LocalStudy,
    Remote,
    StudySync,
)
from optuna_search.storage.testing import SimulatedHub

MB = 1000  # bytes per simulated megabyte (files at 1/1000 of their size)
ADAPTER_MB = {4: 14, 8: 27, 16: 55}
OPTIMIZER_MB = {4: 7, 8: 14, 16: 27}
STEP_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Point:
    r: int
    start_s: float
    trial_s: float
    checkpoints: int
    written: list[float] = field(default_factory=list)
    """When each checkpoint was written on disk."""
    in_remote: int = 0
    """How many of them the remote holds."""


@dataclass
class Process:
    """The run's process or a worker: its own Remote, its own pushes, the shared budget."""

    sync: StudySync
    points: list[Point]
    dirty: dict[str, float] = field(default_factory=dict)
    """Unit -> when it was marked (simulated clock)."""
    last_commit: float = -1e9
    last_renewal: float = 0.0
    not_before: float = 0.0


def _write_checkpoint(folder: Path, r: int, k: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes([k % 251]) * ADAPTER_MB[r] * MB)
    (folder / "optimizer.pt").write_bytes(bytes([(k + 1) % 251]) * OPTIMIZER_MB[r] * MB)
    (folder / "scheduler.pt").write_bytes(b"s%d" % k)
    (folder / "rng_state.pth").write_bytes(b"r%d" % k * 7)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {20 * k}}}')


def _remote(url: str, hub: SimulatedHub) -> Remote:
    remote = Remote(url, hub=hub)
    remote.squash_floor_bytes //= 1000  # the files are at 1/1000 of their size: so is this threshold
    return remote


def simulate(kind: str, work: Path, *, smoke: bool, per_hour: int) -> dict[str, float]:
    clock = Clock()
    hub = SimulatedHub(work / "hub", clock=clock)
    url = "hf://buckets/me/ckpts/flagship" if kind == "bucket" else "hf://datasets/me/flagship-study"
    trial_s = 1200.0 if smoke else 7200.0
    n_ckpt = 3 if smoke else 12
    schedule = (
        [[Point(4, 0, trial_s, n_ckpt)]]
        if smoke
        else [[Point(4, 0, trial_s, n_ckpt), Point(16, trial_s, trial_s, n_ckpt)], [Point(8, 0, trial_s, n_ckpt)]]
    )
    ckpt_root = work / "ckpt" / "flagship"
    local = LocalStudy("flagship", ckpt_root, work / "art", None)
    lease_remote = Remote(url, hub=hub)
    mine = Lease("kaggle:1:sim", "kaggle", 1, clock())
    version = lease_remote.take_lease(mine, 180)
    budget = CommitBudget(work / "commits.json", per_hour)
    scarce = lease_remote.store.commits_are_scarce
    run_cadence = Cadence(per_hour if scarce else None, 60.0)
    worker_cadence = Cadence(per_hour if scarce else None, 60.0, renews=False)
    run = Process(StudySync(_remote(url, hub), local, writer=mine.holder, lease=(mine, version)), [])
    workers = [
        Process(StudySync(_remote(url, hub), local, writer=mine.holder, lease=(mine, version)), pts) for pts in schedule
    ]
    end = max(p.start_s + p.trial_s for pts in schedule for p in pts) + 60
    t0 = clock.t
    worst_redo = 0.0
    worst_behind = 0.0
    while clock.t - t0 <= end:
        now = clock.t - t0
        for w in workers:
            for p in w.points:
                due = p.start_s + len(p.written) * p.trial_s / p.checkpoints
                if len(p.written) < p.checkpoints and now >= due + p.trial_s / p.checkpoints:
                    k = len(p.written) + 1
                    _write_checkpoint(ckpt_root / f"lora_r-{p.r}" / f"checkpoint-{20 * k}", p.r, k)
                    old = ckpt_root / f"lora_r-{p.r}" / f"checkpoint-{20 * (k - 2)}"
                    shutil.rmtree(old, ignore_errors=True)  # Trainer's save_total_limit = 2
                    p.written.append(now)
                    w.dirty[f"points/flagship/lora_r-{p.r}"] = clock.t
                    if k == p.checkpoints:
                        w.dirty["study"] = clock.t  # the trial finished: the database records it
        for proc, cadence in [(run, run_cadence), *((w, worker_cadence) for w in workers)]:
            if now < proc.not_before:
                continue
            if scarce:
                for unit in budget.pushed_by_others(proc.dirty, clock.t):
                    del proc.dirty[unit]
            since_renewal = now - proc.last_renewal
            if scarce:
                since_renewal = min(since_renewal, budget.since_last_s(clock.t))
            action = cadence.decide(
                dirty=bool(proc.dirty),
                holds_lease=True,
                since_commit=now - proc.last_commit,
                since_renewal=since_renewal,
                budget_wait=budget.wait_s(clock.t) if scarce else 0.0,
            )
            if action == "wait":
                budget.want(proc.dirty, clock.t)
            if action is None or action == "wait":
                continue
            units = sorted(proc.dirty) if action == "push" else []
            if action == "push" and scarce:
                units = sorted(set(units) | set(budget.claim(clock.t)))
            if "study" in units:
                (work / "study.db").write_bytes(b"db" * 150 * MB)  # a 300 KB database at this scale
            try:
                if action == "push":
                    result = proc.sync.push_many(units)
                    commits = result.commits
                else:
                    proc.sync.renew()
                    commits = 1 if scarce else 0
            except Exception as e:  # a 429: the simulated Hub says when to come back
                retry = getattr(e, "retry_after", 60.0)
                proc.not_before = now + retry
                continue
            if commits and scarce:
                budget.record(commits, clock.t)
            proc.last_commit = proc.last_renewal = now
            if action == "push":
                proc.dirty.clear()
                for p in (q for w in workers for q in w.points):
                    if f"points/flagship/lora_r-{p.r}" in units:
                        p.in_remote = len(p.written)
        for w in workers:
            for p in w.points:
                if p.written and now < p.start_s + p.trial_s + 60:
                    remote_t = p.written[p.in_remote - 1] if p.in_remote else p.start_s
                    worst_behind = max(worst_behind, p.written[-1] - remote_t)
                    worst_redo = max(worst_redo, now - remote_t)
        clock.t += STEP_S
    figures = hub.figures("me/flagship-study")
    commit_times = sorted(figures.get("commit_times", []))
    max_hour = max((sum(1 for u in commit_times if t <= u < t + 3600) for t in commit_times), default=0)
    history, live = figures.get("history_bytes", 0), figures.get("live_bytes", 0)
    interval = trial_s / n_ckpt
    return {
        "commits_max_hour": max_hour,
        "requests_max_5min": figures["max_requests_5min"],
        "throttled": figures["throttled"],
        "history_over_live": (history / live) if live else 0.0,
        "squashes": figures.get("squashes", 0),
        "behind_s": worst_behind,
        "redo_s": worst_redo,
        "lag_target_s": interval + (3600.0 / per_hour if scarce else STEP_S),
        "checkpoint_interval_s": interval,
        "hours": end / 3600,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one point, three checkpoints: seconds")
    parser.add_argument("--commits-per-hour", type=int, default=40, help="storage.remote_commits_per_hour")
    args = parser.parse_args()
    verdicts = []
    started = time.monotonic()
    for kind in ("bucket", "repo"):
        work = Path(tempfile.mkdtemp(prefix=f"hub-budget-{kind}-"))
        try:
            f = simulate(kind, work, smoke=args.smoke, per_hour=args.commits_per_hour)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"{kind:6s}: {f['hours']:.1f} h simulated; commits in any hour {f['commits_max_hour']}; "
            f"requests in any 5 min {f['requests_max_5min']}; 429s {f['throttled']}; "
            f"history/live {f['history_over_live']:.2f} ({f['squashes']} squashes); remote behind disk at most "
            f"{f['behind_s'] / 60:.1f} min; a kill redoes at most {f['redo_s'] / 60:.1f} min "
            f"(target {f['lag_target_s'] / 60:.1f} = checkpoint interval {f['checkpoint_interval_s'] / 60:.1f} "
            "+ commit interval)"
        )
        verdicts.append(f"{kind} 429s={f['throttled']} {'PASS' if f['throttled'] == 0 else 'FAIL'}")
        verdicts.append(
            f"{kind} lag={f['redo_s'] / 60:.1f}min {'PASS' if f['redo_s'] <= f['lag_target_s'] else 'FAIL'}"
        )
        if kind == "repo":
            verdicts.append(
                f"repo commits/h={f['commits_max_hour']} {'PASS' if f['commits_max_hour'] <= 60 else 'FAIL'}"
            )
            ratio = f["history_over_live"]
            verdicts.append(f"repo history/live={ratio:.2f} {'PASS' if ratio <= 2.0 else 'FAIL'}")
    print(f"({time.monotonic() - started:.1f} s of real time)", file=sys.stderr)
    print("hub_budget: " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
