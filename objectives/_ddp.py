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

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna_search.core import Config, TrialParams, build_config, from_json, to_json
from optuna_search.objectives._data import prepare_study_data, resolve_eval_subset
from optuna_search.objectives._protocol import (
    BudgetExhausted,
    DivergedTraining,
    OutOfMemory,
    Stopped,
    TrialHooks,
    TrialRequest,
    TrialResult,
)
from optuna_search.objectives._qlora import QLoRAObjective
from optuna_search.objectives._quiet import quiet_libraries
from optuna_search.storage import redacted_config

RESULT = "ddp-result-rank{rank}.json"
"""Each rank writes its outcome: the trial's result is rank 0's, but a rank that ran out
of memory (or failed) alone must be heard too."""
RAISED: dict[str, Callable[[str], Exception]] = {
    "budget": BudgetExhausted,
    "stopped": Stopped,
    "diverged": DivergedTraining,
    "error": RuntimeError,
}
"""How a rank's ending other than a result or running out of memory is raised in the trial."""


@dataclass
class RankOutcome:
    """How one rank ended, written by the rank and read back by the trial's process as
    the same types (``core.to_json`` / ``from_json``): the trial's result (rank 0), or what
    stopped it and where."""

    rank: int
    kind: str
    """ok, oom, budget, stopped, diverged or error."""
    result: TrialResult | None = None
    message: str = ""
    phase: str = "train"
    """Where it ran out of memory (kind oom)."""


class DistributedObjective:
    """``Objective`` that trains one configuration over ``train.gpus_per_trial`` ranks."""

    def __init__(self, config: Config) -> None:
        self.config = redacted_config(config)  # the ranks never touch the study's storage
        self.ranks = config.train.gpus_per_trial

    def __call__(self, request: TrialRequest, hooks: TrialHooks) -> TrialResult:
        ckpt = request.checkpoint_dir
        ckpt.mkdir(parents=True, exist_ok=True)
        spec = ckpt / "ddp-spec.json"
        for old in ckpt.glob(RESULT.format(rank="*")):
            old.unlink()
        spec.write_text(json.dumps(self._spec(request, hooks)))
        hooks.progress(f"launching DDP over {self.ranks} processes (torchrun)")
        code = self._launch(spec)
        outcomes = [
            from_json(RankOutcome, json.loads(p.read_text())) for p in sorted(ckpt.glob(RESULT.format(rank="*")))
        ]
        return _result_of(outcomes, code)

    def _spec(self, request: TrialRequest, hooks: TrialHooks) -> dict[str, Any]:
        p = request.params
        per_rank = p.with_batch(p.batch_size, max(1, p.gradient_accumulation // self.ranks))
        return {
            "config": self.config.to_dict(),
            "params": per_rank.to_dict(),
            "subsets": {"test": _ids(request.test_examples), "validation": _ids(request.validation_examples)},
            "checkpoint_dir": str(request.checkpoint_dir),
            # Wall-clock, since the ranks are other processes.
            "deadline_unix": None if request.deadline is None else time.time() + (request.deadline - time.monotonic()),
            "train_until": request.train_until,
            "validate_at": list(request.validate_at),
            "progress_interval": hooks.progress_interval,
            "run_name": request.run_name,
            "eval_batch_size": request.eval_batch_size,
        }

    def _launch(self, spec: Path) -> int:
        """torchrun, waited for; a Ctrl-C or SIGTERM here is passed on (torchrun hands it
        to the ranks, which agree on a step, checkpoint there and stop) before it is raised."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.ranks}",
                "-m",
                "optuna_search.objectives._ddp",
                str(spec),
            ],
            # torchrun would pin each CPU rank to 1 thread; on CUDA the GPUs do the work anyway.
            env={
                **os.environ,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.ranks))),
            },
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def _result_of(outcomes: list[RankOutcome], code: int) -> TrialResult:
    """The trial's result from the ranks' outcomes: rank 0's when every rank is done; a
    rank that ran out of memory makes it an OutOfMemory (of its phase), whichever rank."""
    for out in outcomes:
        if out.kind == "oom":
            raise OutOfMemory(out.message, out.phase)
    main = next((o for o in outcomes if o.rank == 0), None)
    for out in ([main] if main else []) + outcomes:
        if out.kind in RAISED:
            raise RAISED[out.kind](out.message)
    if code == 0 and main is not None and main.kind == "ok" and main.result is not None:
        return main.result
    raise RuntimeError(f"the DDP trial exited with code {code} and no result (see the ranks' output above)")


def _ids(examples) -> list[dict[str, str]]:
    return [{"id": e.id, "sha256": e.sha256} for e in examples]


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    log = logging.getLogger("optuna_search")
    quiet_libraries()
    config = build_config(spec["config"])
    data = prepare_study_data(
        config.data, config.eval, train_seed=config.train.seed, max_length=config.model.max_length
    ).dataset
    deadline = None if spec["deadline_unix"] is None else time.monotonic() + (spec["deadline_unix"] - time.time())
    request = TrialRequest(
        params=TrialParams.from_dict(spec["params"]),
        data=data,
        test_examples=resolve_eval_subset(data.test, spec["subsets"]["test"]),
        validation_examples=resolve_eval_subset(data.validation, spec["subsets"]["validation"]),
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        deadline=deadline,
        train_until=spec["train_until"],
        validate_at=tuple(spec["validate_at"]),
        run_name=spec["run_name"],
        eval_batch_size=spec.get("eval_batch_size"),
    )
    # A SIGTERM (Kaggle's stop, torchrun passing on the parent's) asks this rank to stop;
    # the ranks agree on the step (objectives/_trainer.agree) and checkpoint there.
    asked = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: asked.set())
    hooks = TrialHooks(
        progress=lambda m: log.info("%s", m), progress_interval=spec["progress_interval"], stop_requested=asked.is_set
    )
    out = _outcome(QLoRAObjective(config), request, hooks, rank)
    Path(spec["checkpoint_dir"], RESULT.format(rank=rank)).write_text(json.dumps(to_json(out)))
    leave_process_group()
    return 0 if out.kind == "ok" else 1


def leave_process_group(timeout_s: float = 30.0) -> None:
    """Leave the process group together, before the interpreter exits: a gloo thread still
    running at exit aborts the rank ("terminate called without an active exception", exit
    -6), and torchrun then reports a trial that finished as failed. The ranks first meet
    (gloo's monitored barrier, bounded: a rank that already died is waited for
    ``timeout_s`` at most), so that none tears its connections down while another still
    writes its checkpoint or result (seen: rank 0 aborted after rank 1 had left)."""
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    # A peer that died makes the barrier raise: leave anyway (its result already says why).
    with contextlib.suppress(Exception):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    dist.destroy_process_group()


def _outcome(objective: QLoRAObjective, request: TrialRequest, hooks: TrialHooks, rank: int) -> RankOutcome:
    try:
        return RankOutcome(rank, "ok", objective(request, hooks))
    except BudgetExhausted as e:
        return RankOutcome(rank, "budget", message=str(e))
    except Stopped as e:
        return RankOutcome(rank, "stopped", message=str(e))
    except OutOfMemory as e:
        return RankOutcome(rank, "oom", message=str(e), phase=e.phase)
    except DivergedTraining as e:
        return RankOutcome(rank, "diverged", message=str(e))
    except Exception as e:
        return RankOutcome(rank, "error", message=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
