"""One trial on several GPUs with DDP (``train.gpus_per_trial > 1``): an ``Objective``
that wraps :class:`QLoRAObjective`.

:class:`DistributedObjective` writes a spec file and launches this module through
``torch.distributed.run`` (torchrun), one process per GPU. Every rank loads its own 4-bit
copy of the base model on its GPU (``device_map={"": local_rank}``) and Trainer runs
data-parallel training; rank 0 measures validation accuracy, evaluates the test subset
and writes the result file that the wrapper reads back; the other ranks' results are
dropped here. Gradient accumulation is divided by the number of ranks, so the effective
batch stays the configured one. Checkpoints go to the same per-point folder, so a killed
DDP trial resumes like any other. Pruning needs live validation values and is not
available with DDP (the validation curve arrives when the trial ends).

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
from typing import Any

from optuna_search.core import Config, SplitScores, TrialParams, build_config
from optuna_search.objectives._data import prepare_study_data, resolve_eval_subset
from optuna_search.objectives._metrics import Evaluation, Prediction
from optuna_search.objectives._protocol import (
    BudgetExhausted,
    DivergedTraining,
    OutOfMemory,
    TrialHooks,
    TrialRequest,
    TrialResult,
    ValidationPoint,
)
from optuna_search.objectives._qlora import QLoRAObjective
from optuna_search.objectives._quiet import quiet_libraries
from optuna_search.storage._storages import redacted_config

_STATUS = {"budget": BudgetExhausted, "oom": OutOfMemory, "diverged": DivergedTraining, "error": RuntimeError}


class DistributedObjective:
    """``Objective`` that trains one configuration over ``train.gpus_per_trial`` ranks."""

    def __init__(self, config: Config) -> None:
        self.config = redacted_config(config)  # the ranks never touch the study's storage
        self.ranks = config.train.gpus_per_trial

    def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult:
        ckpt = request.checkpoint_dir
        ckpt.mkdir(parents=True, exist_ok=True)
        spec, result = ckpt / "ddp-spec.json", ckpt / "ddp-result.json"
        result.unlink(missing_ok=True)
        p = request.params
        per_rank = p.with_batch(p.batch_size, max(1, p.gradient_accumulation // self.ranks))
        spec.write_text(json.dumps({
            "config": self.config.to_dict(),
            "params": per_rank.to_dict(),
            "subsets": {"test": _ids(request.test_examples), "validation": _ids(request.validation_examples)},
            "checkpoint_dir": str(ckpt),
            # Wall-clock, since the ranks are other processes.
            "deadline_unix": None if request.deadline is None else time.time() + (request.deadline - time.monotonic()),
            "train_until": request.train_until,
            "validate_at": list(request.validate_at),
            "progress_interval": hooks.progress_interval,
            "run_name": request.run_name,
            "result": str(result),
        }))
        hooks.progress(f"launching DDP over {self.ranks} processes (torchrun)")
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.ranks}",
             "-m", "optuna_search.objectives._ddp", str(spec)],
            # torchrun would pin each CPU rank to 1 thread; on CUDA the GPUs do the work anyway.
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.ranks)))},
        )
        if result.exists():
            out = json.loads(result.read_text())
            status = out.get("status")
            if status in _STATUS:
                raise _STATUS[status](out["message"])
            if proc.returncode == 0 and status == "ok":
                return result_from_dict(out["result"])
        raise RuntimeError(f"the DDP trial exited with code {proc.returncode} and no result (see the ranks' output above)")


def _ids(examples) -> list[dict[str, str]]:
    return [{"id": e.id, "sha256": e.sha256} for e in examples]


def result_to_dict(res: TrialResult) -> dict[str, Any]:
    d = dataclasses.asdict(res)
    d["validation_curve"] = [vp.to_record() for vp in res.validation_curve]
    return d


def _evaluation_from_dict(d: dict[str, Any] | None) -> Evaluation | None:
    if d is None:
        return None
    return Evaluation([Prediction(**p) for p in d["predictions"]], SplitScores(**d["scores"]), d["seconds"], d["method"])


def result_from_dict(d: dict[str, Any]) -> TrialResult:
    d = dict(d)
    d["test"] = _evaluation_from_dict(d["test"])
    d["validation"] = _evaluation_from_dict(d["validation"])
    d["validation_curve"] = [ValidationPoint(**vp) for vp in d["validation_curve"]]
    return TrialResult(**d)


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
        checkpoint_dir=Path(spec["checkpoint_dir"]), deadline=deadline, train_until=spec["train_until"],
        validate_at=tuple(spec["validate_at"]), run_name=spec["run_name"],
    )
    hooks = TrialHooks(progress=lambda m: log.info("%s", m), progress_interval=spec["progress_interval"])
    out: dict[str, Any]
    try:
        out = {"status": "ok", "result": result_to_dict(QLoRAObjective(config)(request, hooks))}
    except BudgetExhausted as e:
        out = {"status": "budget", "message": str(e)}
    except OutOfMemory as e:
        out = {"status": "oom", "message": str(e)}
    except DivergedTraining as e:
        out = {"status": "diverged", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the wrapper, which records it on the trial
        out = {"status": "error", "message": f"{type(e).__name__}: {e}"}
    if rank == 0:  # the other ranks trained their share; rank 0 holds the evaluations
        Path(spec["result"]).write_text(json.dumps(out))
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
