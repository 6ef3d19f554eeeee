"""`predict` against the evaluation path, on the same model and examples, and its memory
on a large input.

1. A demo study of one trial (r = 8, label scoring) gives a trained adapter.
2. Speed: the study's test examples (150 rows) through ``Predictor`` from a JSONL file
   (reading, batching, writing included) and through the evaluation function the trial
   was scored with (``evaluate_examples``, examples already in memory), best of 3 each:
   rows/s and their ratio (it reuses the batched scorer; it is not a second one).
3. Streaming: peak RSS of `predict` on 1,000 rows and on 100,000 rows (the same reports
   repeated with new ids), each in a fresh process: their ratio.

    python benchmarks/predict_speed.py [--large 100000]
    python benchmarks/predict_speed.py --smoke     # 20 rows, 200 for the memory (seconds)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, logging
from optuna_search.objectives import quiet_libraries
from optuna_search.search.use import predict_file
quiet_libraries()
logging.basicConfig(level=logging.WARNING)
predict_file(sys.argv[1], sys.argv[2], location=None, model_dir=sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument(
        "--smoke", action="store_true", help="a smaller study, 20 rows, 200 for the memory, one repeat: seconds"
    )
    args = ap.parse_args()
    from optuna_search import Predictor
    from optuna_search.objectives import ensure_demo_data, evaluate_examples, quiet_libraries
    from optuna_search.search.use import predict_file

    smoke = []
    if args.smoke:
        args.large = 200
        smoke = [
            "--set",
            "data.train_samples=32",
            "--set",
            "train.epochs=1",
            "--set",
            "eval.num_samples=8",
            "--set",
            "eval.validation_samples=8",
        ]
    repeats = 1 if args.smoke else 3

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="predict-speed-"))
    fast = Path(__file__).resolve().parents[1] / "tests" / "fast.toml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_search.search",
            "-q",
            "run",
            "--preset",
            "demo",
            "--config",
            str(fast),
            "--set",
            "study.grid={lora_r=[8]}",
            "--set",
            "eval.method='score'",
            *smoke,
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    model_dir = work / "model"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_search.search",
            "-q",
            "export-model",
            "--preset",
            "demo",
            "--output",
            str(model_dir),
        ],
        cwd=work,
        check=True,
        capture_output=True,
    )
    rows_file = ensure_demo_data() / "test.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()][: 20 if args.smoke else None]
    if args.smoke:
        rows_file = work / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictor = Predictor.from_dir(model_dir)
    examples = predictor.examples(rows)
    spec = predictor.spec

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    def through_predict() -> None:
        out = work / "p.jsonl"
        out.unlink(missing_ok=True)
        predict_file(str(rows_file), str(out), location=None, model_dir=str(model_dir))

    evaluation = timed(
        lambda: evaluate_examples(
            predictor.model,
            predictor.tokenizer,
            predictor.encoder,
            examples,
            method=spec.method,
            batch_size=spec.batch_size,
        )
    )
    # predict_file loads the model itself: time the model load once and leave it out.
    t0 = time.perf_counter()
    Predictor.from_dir(model_dir)
    load = time.perf_counter() - t0
    predict = timed(through_predict) - load
    n = len(rows)
    print(
        f"evaluation path: {n / evaluation:.1f} rows/s; predict (file in, file out, model load excluded: {load:.1f} s): "
        f"{n / predict:.1f} rows/s"
    )
    sizes = {}
    small = 100 if args.smoke else 1000
    for size in (small, args.large):
        inp = work / f"in-{size}.jsonl"
        with open(inp, "w") as fh:
            for i in range(size):
                fh.write(json.dumps({**rows[i % n], "id": f"row-{i}"}) + "\n")
        t0 = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(inp), str(work / f"out-{size}.jsonl"), str(model_dir)],
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            sys.exit(child.stderr[-3000:])
        sizes[size] = int(child.stdout.strip().splitlines()[-1]) / 1024
        print(
            f"predict on {size:,} rows: peak RSS {sizes[size]:.0f} MiB, {size / (time.perf_counter() - t0):.1f} rows/s "
            "(process start and model load included)"
        )
    print(f"peak RSS {args.large:,} rows / {small:,} rows = {sizes[args.large] / sizes[small]:.2f}")
    print(f"predict vs evaluation: rows/s ratio = {evaluation / predict:.2f}")


if __name__ == "__main__":
    main()
