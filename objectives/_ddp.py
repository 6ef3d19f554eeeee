"""One trial on several GPUs with DDP (``train.gpus_per_trial > 1``).

The trial's process (the Optuna objective adapter) writes a spec file and launches this
module through ``torch.distributed.run`` (torchrun), one process per GPU. Every rank
loads its own 4-bit copy of the base model on its GPU (``device_map={"": local_rank}``)
and Trainer runs data-parallel training; rank 0 measures validation accuracy, evaluates
the test subset and writes the result file that the adapter reads back. Checkpoints go to
the same per-point folder, so a killed DDP trial resumes like any other. Pruning needs
live validation values and is not available with DDP (the config refuses the pair).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m optuna_search.objectives._ddp SPEC.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from optuna_search.core import Config, SplitScores, TrialParams, build_config
from optuna_search.objectives._data import prepare_study_data, resolve_eval_subset
from optuna_search.objectives._metrics import Evaluation, Prediction
from optuna_search.objectives._protocol import BudgetExhausted, OutOfMemory, TrialHooks, TrialRequest, TrialResult
from optuna_search.objectives._qlora import QLoRAObjective
from optuna_search.objectives._quiet import quiet_libraries


def result_to_dict(res: TrialResult) -> dict[str, Any]:
    return dataclasses.asdict(res)


def _evaluation_from_dict(d: dict[str, Any] | None) -> Evaluation | None:
    if d is None:
        return None
    return Evaluation([Prediction(**p) for p in d["predictions"]], SplitScores(**d["scores"]), d["seconds"], d["method"])


def result_from_dict(d: dict[str, Any]) -> TrialResult:
    d = dict(d)
    d["test"] = _evaluation_from_dict(d["test"])
    d["validation"] = _evaluation_from_dict(d["validation"])
    d["validation_curve"] = [tuple(p) for p in d["validation_curve"]]
    return TrialResult(**d)


def run_distributed(config: Config, request: TrialRequest, subsets: dict[str, list[dict[str, str]]],
                    progress: Callable[[str], None]) -> TrialResult:
    """Launch the DDP trial and return its result (raises BudgetExhausted / OutOfMemory
    like the single-process path). ``config.storage.url`` must already be redacted: the
    ranks never touch the study's storage."""
    ckpt = request.checkpoint_dir
    ckpt.mkdir(parents=True, exist_ok=True)
    spec, result = ckpt / "ddp-spec.json", ckpt / "ddp-result.json"
    result.unlink(missing_ok=True)
    deadline = request.deadline
    spec.write_text(json.dumps({
        "config": config.to_dict(),
        "params": request.params.to_dict(),
        "subsets": subsets,
        "checkpoint_dir": str(ckpt),
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
        status = out.get("status")
        if status == "budget":
            raise BudgetExhausted(out["message"])
        if status == "oom":
            raise OutOfMemory(out["message"])
        if status == "error":
            raise RuntimeError(out["message"])
        if proc.returncode == 0:
            return result_from_dict(out["result"])
    raise RuntimeError(f"the DDP trial exited with code {proc.returncode} and no result (see the ranks' output above)")


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    log = logging.getLogger("optuna_search")
    quiet_libraries()
    config = build_config(spec["config"])
    data = prepare_study_data(config.data, config.eval, train_seed=config.train.seed, max_length=config.model.max_length).dataset
    deadline = None if spec["deadline_unix"] is None else time.monotonic() + (spec["deadline_unix"] - time.time())
    request = TrialRequest(
        params=TrialParams.from_dict(spec["params"]), data=data,
        test_examples=resolve_eval_subset(data.test, spec["subsets"]["test"]),
        validation_examples=resolve_eval_subset(data.validation, spec["subsets"]["validation"]),
        checkpoint_dir=Path(spec["checkpoint_dir"]), deadline=deadline,
    )
    out: dict[str, Any]
    try:
        res = QLoRAObjective(config)(request, TrialHooks(progress=lambda m: log.info("%s", m)))
        out = {"status": "ok", "result": result_to_dict(res)} if res is not None else {}
    except BudgetExhausted as e:
        out = {"status": "budget", "message": str(e)}
    except OutOfMemory as e:
        out = {"status": "oom", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the adapter, which records it on the trial
        out = {"status": "error", "message": f"{type(e).__name__}: {e}"}
    if rank == 0 and out:
        Path(spec["result"]).write_text(json.dumps(out))
    return 0 if out.get("status", "ok") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
