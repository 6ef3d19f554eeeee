"""One trial on several GPUs with DDP (``train.gpus_per_trial > 1``).

The trial's process (the Optuna objective) writes a spec file and launches this module
through ``torch.distributed.run`` (torchrun), one process per GPU. Every rank loads its
own 4-bit copy of the base model on its GPU (``device_map={"": local_rank}``) and
Trainer runs data-parallel training; rank 0 then evaluates and writes the result file
that the objective reads back. Checkpoints go to the same per-grid-point folder, so a
killed DDP trial resumes like any other.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m optuna_search.objectives._ddp SPEC.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXIT_BUDGET = 3
EXIT_OOM = 4


def result_to_dict(res) -> dict[str, Any]:
    return dataclasses.asdict(res)


def result_from_dict(d: dict[str, Any]):
    from optuna_search.objectives._metrics import Prediction, Scores
    from optuna_search.objectives._qlora import TrialResult

    d = dict(d)
    d["scores"] = Scores(**d["scores"])
    d["predictions"] = [Prediction(**p) for p in d["predictions"]]
    return TrialResult(**d)


def run_distributed(config: Any, params: dict[str, Any], eval_subset: list[dict[str, str]], checkpoint_dir: Path,
                    *, deadline: float | None, progress) -> Any:
    """Launch the DDP trial and return its TrialResult (raises BudgetExhausted /
    OutOfMemory like the single-process path)."""
    from optuna_search.objectives._qlora import BudgetExhausted, OutOfMemory

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    spec = checkpoint_dir / "ddp-spec.json"
    result = checkpoint_dir / "ddp-result.json"
    result.unlink(missing_ok=True)
    from optuna_search.storage._storages import redact_url

    # The ranks never touch the study's storage; keep its password out of the file.
    shown = config.to_dict()
    shown["storage"]["url"] = redact_url(config.storage.url)
    spec.write_text(json.dumps({
        "config": shown,
        "params": params,
        "eval_subset": eval_subset,
        "checkpoint_dir": str(checkpoint_dir),
        # Wall-clock, since the ranks are other processes.
        "deadline_unix": None if deadline is None else time.time() + (deadline - time.monotonic()),
        "result": str(result),
    }))
    n = config.train.gpus_per_trial
    progress(f"launching DDP over {n} processes (torchrun)")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
         "-m", "optuna_search.objectives._ddp", str(spec)],
        # torchrun would pin each CPU rank to 1 thread; on CUDA the GPUs do the work anyway.
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))},
    )
    if result.exists():
        out = json.loads(result.read_text())
        if out.get("status") == "budget":
            raise BudgetExhausted(out["message"])
        if out.get("status") == "oom":
            raise OutOfMemory(out["message"])
        if out.get("status") == "error":
            raise RuntimeError(out["message"])
        if proc.returncode == 0:
            return result_from_dict(out["result"])
    raise RuntimeError(f"the DDP trial exited with code {proc.returncode} and no result (see the ranks' output above)")


def main(spec_path: str) -> int:
    import logging

    from optuna_search.objectives._data import load_dataset_from_config, resolve_eval_subset
    from optuna_search.objectives._qlora import BudgetExhausted, OutOfMemory, train_and_evaluate
    from optuna_search.search._config import load_config

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    log = logging.getLogger("optuna_search")
    from optuna_search.search._cli import _quiet_libraries

    _quiet_libraries()
    config = load_config(overrides=spec["config"])
    data = load_dataset_from_config(config.data)
    examples = resolve_eval_subset(data.test, spec["eval_subset"])
    deadline = None if spec["deadline_unix"] is None else time.monotonic() + (spec["deadline_unix"] - time.time())
    out: dict[str, Any]
    try:
        res = train_and_evaluate(config, spec["params"], data, examples, Path(spec["checkpoint_dir"]),
                                 progress=lambda m: log.info("%s", m), deadline=deadline)
        out = {"status": "ok", "result": result_to_dict(res)} if res is not None else {}
    except BudgetExhausted as e:
        out = {"status": "budget", "message": str(e)}
    except OutOfMemory as e:
        out = {"status": "oom", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the objective, which records it on the trial
        out = {"status": "error", "message": f"{type(e).__name__}: {e}"}
    if rank == 0 and out:
        Path(spec["result"]).write_text(json.dumps(out))
    return 0 if out.get("status", "ok") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
