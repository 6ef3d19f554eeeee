"""What a remote costs a study, measured on the demo (tiny model, CPU):

1. sync overhead: the time of one demo point with `--remote` (a folder, and a real S3
   server: moto's, on 127.0.0.1, in a process of its own at the lowest priority) over the same point without, interleaved repeats, best
   against best (the uploads run in a background thread): the trial's own time (its
   training and evaluation seconds, as the study records them) and the run's wall time
   (which adds the remote's checks at the start and the last upload at the end);
   and the HTTP requests each S3 run made;
2. bytes per checkpoint: what a checkpoint of a point puts in the remote (adapter,
   optimizer, scheduler, RNG and trainer state: never the base model), file by file,
   read from the remote of a machine killed mid-point;
3. time from a fresh machine to the first resumed step: machine A is killed in the middle
   of a point, and machine B (an empty folder) runs the same command: the seconds from
   B's start to its first training step after the resume, and what it pulled.

    python benchmarks/remote_sync.py [--repeats 3]
    python benchmarks/remote_sync.py --smoke --no-s3   # 12 steps, one repeat (seconds)

Last line: the overhead ratio of the trial's time, the worst remote's (target <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "optuna_search.search"]
POINT = [
    "--preset",
    "demo",
    "--set",
    "study.grid={lora_r=[8]}",
    "--set",
    "train.epochs=1",
    "--set",
    "data.train_samples=600",
    "--set",
    "eval.num_samples=50",
    "--set",
    "eval.validation_samples=50",
    "--set",
    "train.checkpoint_steps=10",
]
SMOKE_POINT = [
    *POINT,
    "--set",
    "data.train_samples=96",
    "--set",
    "eval.num_samples=8",
    "--set",
    "eval.validation_samples=8",
    "--set",
    "train.checkpoint_steps=5",
]
KILL = {"hold": r"step 4[1-9]/", "checkpoint": 40}
"""Machine A is held (and killed) past this step, once this checkpoint is in the remote."""
SMOKE_KILL = {"hold": r"step 1[1-9]/", "checkpoint": 10}
QUICK_TAKEOVER = ["--set", "storage.heartbeat_interval=1", "--set", "storage.grace_period=3"]
"""For the fresh machine only: a killed machine's lease goes stale in 3 s, not 180 (the
overhead runs keep the defaults: a heartbeat a minute)."""


def _run(work: Path, *extra: str, env: dict | None = None) -> tuple[float, float]:
    """(the run's wall seconds, the trial's training + evaluation seconds)."""
    import optuna

    work.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*CLI, "run", *POINT, *extra],
        cwd=work,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (trial,) = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}").get_trials()
    return wall, trial.user_attrs["train_seconds"] + trial.user_attrs["eval_seconds"]


def _requests(log: Path | None) -> int:
    """The requests the S3 server has answered so far (one werkzeug log line each)."""
    return 0 if log is None else log.read_text(errors="replace").count(' HTTP/1.1"')


def _s3_server(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own at the lowest priority: a real endpoint's
    work is done on another machine, not on the cores that train."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        ["nice", "-n", "19", str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the S3 server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)


def overhead(tmp: Path, repeats: int, s3: tuple[str, dict] | None, log: Path | None) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {"wall": {}, "trial": {}}
    for i in range(repeats):
        variants = [("none", ()), ("folder", ("--remote", str(tmp / f"remote-{i}")))]
        if s3 is not None:
            variants.append(("s3", ("--remote", f"{s3[0]}/overhead-{i}")))
        for name, extra in variants:
            before = _requests(log)
            wall, trial = _run(tmp / f"{name}-{i}", *extra, env=s3[1] if s3 and name == "s3" else None)
            best["wall"][name] = min(best["wall"].get(name, float("inf")), wall)
            best["trial"][name] = min(best["trial"].get(name, float("inf")), trial)
            requests = f", {_requests(log) - before} HTTP requests" if name == "s3" else ""
            print(f"  repeat {i + 1}: {name:6s} trial {trial:5.2f} s, run {wall:5.1f} s{requests}", flush=True)
    return best


def checkpoint_bytes(remote: str) -> None:
    from optuna_search.storage import Remote

    m = Remote(remote).manifest("points/demo/lora_r-8")
    if m is None:
        print("  (no manifest of the point in the remote)")
        return
    groups: dict[str, dict[str, int]] = {}
    for rel, meta in m.files.items():
        groups.setdefault(rel.split("/")[0], {})[rel.split("/", 1)[-1]] = meta.bytes
    for folder, files in sorted(groups.items()):
        total = sum(files.values())
        print(
            f"  {folder}: {total / 1024:.1f} KiB = "
            + ", ".join(f"{n} {b / 1024:.1f}" for n, b in sorted(files.items()))
        )


def fresh_machine(tmp: Path, remote: str) -> tuple[float, float, int]:
    """(seconds to the first resumed step, seconds to the end, the step it resumed from)."""
    a, b = tmp / "machine-a", tmp / "machine-b"
    a.mkdir()
    b.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "hooks"), os.environ.get("PYTHONPATH", "")]),
        "OPTUNA_SEARCH_TEST_HOLD": KILL["hold"],
    }
    proc = subprocess.Popen(
        [*CLI, "run", *POINT, *QUICK_TAKEOVER, "--remote", remote, "--progress-interval", "0"],
        cwd=a,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:  # type: ignore[union-attr]
        if "TEST-HOLD" in line:
            break
    from optuna_search.storage import Remote

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the checkpoint's upload (a background thread) lands
        m = Remote(remote).manifest("points/demo/lora_r-8")
        if m is not None and f"checkpoint-{KILL['checkpoint']}/trainer_state.json" in m.files:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = KILL["checkpoint"]
    print(
        f"2. machine A killed at step {step + 1}, its step-{step} checkpoint in the remote (a folder); one checkpoint there:"
    )
    checkpoint_bytes(remote)
    time.sleep(3.5)  # the lease goes stale (storage.grace_period = 3 s)
    t0 = time.perf_counter()
    b_proc = subprocess.Popen(
        [*CLI, "run", *POINT, *QUICK_TAKEOVER, "--remote", remote, "--progress-interval", "0"],
        cwd=b,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first, resumed = None, 0
    for line in b_proc.stderr:  # type: ignore[union-attr]
        m = re.search(r"resuming from checkpoint .*\(step (\d+)\)", line)
        if m:
            resumed = int(m.group(1))
        if first is None and re.search(r" step \d+/", line):
            first = time.perf_counter() - t0
    b_proc.wait()
    return first or float("nan"), time.perf_counter() - t0, resumed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 server (moto) variant")
    ap.add_argument("--smoke", action="store_true", help="a point of 12 steps, one repeat: seconds")
    args = ap.parse_args()
    if args.smoke:
        args.repeats = 1
        POINT[:] = SMOKE_POINT
        KILL.update(SMOKE_KILL)
    s3, server, log = None, None, None
    if not args.no_s3:
        log = Path(tempfile.mkdtemp(prefix="moto-")) / "requests.log"
        server, endpoint = _s3_server(log)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update(env)
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        s3 = ("s3://bench", env)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"1. one demo point ({'20' if args.smoke else '75'} optimizer steps), best of {args.repeats}:")
        best = overhead(tmp, args.repeats, s3, log)
        first, total, step = fresh_machine(tmp, str(tmp / "fresh-remote"))
        print("3. machine B (an empty folder) runs the same command:")
        print(
            f"  resumed from step {step}; first training step {first:.1f} s after the start, the point done {total:.1f} s after"
        )
    if server is not None:
        server.terminate()
        server.wait()
    for what in ("trial", "wall"):
        for name in ("folder", "s3"):
            if name in best[what]:
                b, none = best[what][name], best[what]["none"]
                print(f"sync overhead ({name}, {what}): {b:.2f} s / {none:.2f} s = {b / none:.3f} ({b - none:+.2f} s)")
    worst = max(v for n, v in best["trial"].items() if n != "none")
    print(f"sync overhead ratio (trial time) = {worst / best['trial']['none']:.2f}")


if __name__ == "__main__":
    main()
