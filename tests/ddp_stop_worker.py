"""One rank of tests/test_cuda_path.py's DDP stop test, under torchrun (gloo, CPU): a
tiny model trained by the study's Trainer and callback, where only rank 1 is asked to
stop, at step 3. Writes OUT/rank<r>.json with the step it stopped at.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_stop_worker.py OUT
"""

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from optuna_search.objectives._ddp import leave_process_group
from optuna_search.objectives._train import ValidationRun
from optuna_search.objectives._trainer import StudyCallback, StudyTrainer


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    rows = [[1 + (i + j) % 60 for j in range(8)] for i in range(64)]
    data = Dataset.from_dict({"input_ids": rows, "labels": rows, "attention_mask": [[1] * 8 for _ in rows]})
    run = ValidationRun(None, lambda vp: False)
    holder = {}
    callback = StudyCallback(
        run, 1, lambda m: None, None, lambda: rank == 1 and holder["trainer"].state.global_step >= 3, 0.0
    )
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=2,
        num_train_epochs=1,
        save_strategy="steps",
        save_steps=1000,
        logging_steps=1,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        ddp_backend="gloo",
        eval_strategy="no",
    )
    trainer = StudyTrainer(validation=run, model=model, args=args, train_dataset=data, callbacks=[callback])
    holder["trainer"] = trainer
    trainer.train()
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "global_step": trainer.state.global_step,
                "max_steps": trainer.state.max_steps,
                "stopped_on_request": callback.stopped_on_request,
            }
        )
    )
    leave_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
