"""The gpu tier: the flagship's CUDA path on one GPU made to look like a T4, in a few
minutes, with nothing downloaded (`benchmarks/gpu_check.sh` runs it on a bare CUDA machine).

A Mistral-7B-shaped model (its hidden size, MLP, 32 heads and 8 key/value heads; 4 of its
32 layers; the demo tokenizer's vocabulary; random fp16 weights) trained with the kaggle-t4
preset's [model] and [train] settings (NF4 with double quantization, fp16, gradient
checkpointing, paged 8-bit AdamW, batch 4 x 4) under a 15 GiB memory cap and with flash
attention off (a T4 has neither more memory nor flash kernels): a real CUDA out-of-memory
in a training step, recovered with the first model's memory given back; a checkpoint
written, the run interrupted and resumed from it; finite losses; evaluation and `predict`
agreeing; an exported, merged model that loads and runs; peak memory against the estimate.
Each figure goes to $OPTUNA_SEARCH_GPU_REPORT (JSON) when set.
"""

import json
import os
import time

import optuna
import pytest
from conftest import run_main
from optuna.trial import TrialState

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
T4_BYTES = 15 * 2**30
LAYERS = 4
REPORT: dict = {}


def _report(**figures):
    REPORT.update(figures)
    path = os.environ.get("OPTUNA_SEARCH_GPU_REPORT")
    if path:
        with open(path, "w") as fh:
            json.dump(REPORT, fh, indent=1, default=str)
    print(json.dumps(figures, default=str))


@pytest.fixture(scope="module")
def t4():
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_BYTES / total))
    torch.backends.cuda.enable_flash_sdp(False)  # sm_75 has no flash attention
    _report(
        device=torch.cuda.get_device_name(),
        total_gib=round(total / 2**30, 1),
        cap_gib=15,
        torch=torch.__version__,
        alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    )
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)


@pytest.fixture(scope="module")
def mistral_shaped(tmp_path_factory, demo_model_dir):
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(str(demo_model_dir))
    cfg = MistralConfig(
        vocab_size=len(tok),
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=LAYERS,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        sliding_window=None,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("mistral-shaped")
    t0 = time.monotonic()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MistralForCausalLM(cfg).half()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    _report(model_layers=LAYERS, model_params=params, model_build_s=round(time.monotonic() - t0, 1))
    return path


def _args(model_dir, *extra):
    return [
        "run",
        "--preset",
        "kaggle-t4",
        "--set",
        f'model.name_or_path="{model_dir}"',
        "--set",
        'data.train="builtin:demo-bugs/train.jsonl"',
        "--set",
        'data.validation="builtin:demo-bugs/val.jsonl"',
        "--set",
        'data.test="builtin:demo-bugs/test.jsonl"',
        "--set",
        "data.train_samples=64",
        "--set",
        "study.grid={lora_r=[8]}",
        "--set",
        "train.epochs=2",
        "--set",
        "train.checkpoint_steps=2",
        "--set",
        "eval.num_samples=16",
        "--set",
        "eval.validation_samples=16",
        "--set",
        "eval.method='score'",
        "--set",
        "study.name='gpu'",
        "--storage",
        "sqlite:///gpu.db",
        "--set",
        "train.output_dir='ckpt'",
        "--set",
        "storage.artifacts='art'",
        "--progress-interval",
        "0",
        *extra,
    ]


def _study(work):
    return optuna.load_study(study_name="gpu", storage=f"sqlite:///{work / 'gpu.db'}")


def test_the_kaggle_t4_path_on_one_gpu(t4, mistral_shaped, tmp_path, demo_cache, monkeypatch):
    import torch
    from transformers import Trainer

    from optuna_search.objectives import _qlora

    # 1. A real out-of-memory in a training step of the first attempt; then, in the
    # retry, an interruption after its step-4 checkpoint.
    loads, interrupted = [], []
    real_load, real_step = _qlora.load_lora_model, Trainer.training_step

    def load(*a, **kw):
        loads.append(torch.cuda.memory_allocated())
        return real_load(*a, **kw)

    def step(self, *a, **kw):
        if self.args.per_device_train_batch_size == 4 and self.state.global_step == 2:
            torch.empty(T4_BYTES, dtype=torch.uint8, device="cuda")  # more than the cap: a real CUDA OOM
        if self.args.per_device_train_batch_size == 2 and self.state.global_step == 5 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    monkeypatch.setattr(_qlora, "load_lora_model", load)
    monkeypatch.setattr(Trainer, "training_step", step)
    t0 = time.monotonic()
    first = run_main(*_args(mistral_shaped), cwd=tmp_path)
    assert first.returncode == 130, first.stderr[-3000:]
    assert "out of memory; retrying with per-device batch 2 x accumulation 8" in first.stderr
    # The retry loaded its model into the memory the first one gave back.
    assert len(loads) == 2 and loads[1] < 256 * 2**20, loads
    second = run_main(*_args(mistral_shaped), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    seconds = time.monotonic() - t0
    study = _study(tmp_path)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    t = done[0]
    ua = t.user_attrs
    assert ua["compute_dtype"] == "float16" and ua["effective_params"]["optim"] == "paged_adamw_8bit"
    assert ua["resumed_from_step"] == 4 and ua["batch_size"] == 2  # the retry's smaller batch, kept on resume
    (oom,) = study.trials[0].user_attrs["oom_retries"]  # the attempt that ran out, then was interrupted
    assert oom["phase"] == "train" and oom["batch_size"] == 4
    assert all(loss == loss and abs(loss) < 1e4 for loss in ua["train_loss_per_epoch"] + ua["eval_loss_per_epoch"])
    assert 0 < ua["peak_memory_mb"] * 2**20 < T4_BYTES and ua["peak_memory_kind"] == "cuda_max_allocated"
    _report(
        study_s=round(seconds, 1),
        peak_memory_mib=ua["peak_memory_mb"],
        train_loss=ua["train_loss_per_epoch"],
        loads_allocated_bytes=loads,
        estimate_gib=_estimate(mistral_shaped, ua),
    )

    # 2. predict on the evaluated examples, in their order: the trial's own predictions.
    from optuna_search.objectives._demo_data import ensure_demo_data

    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "art"))
    with store.open_reader(ua["predictions_artifact_id"]) as fh:
        stored = {r["id"]: r for r in map(json.loads, fh.read().decode().splitlines())}
    rows = {r["id"]: r for r in map(json.loads, (ensure_demo_data() / "test.jsonl").read_text().splitlines())}
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(rows[e["id"]]) + "\n" for e in study.user_attrs["eval_subset"]))
    out = tmp_path / "p.jsonl"
    proc = run_main(
        "predict", "--storage", "sqlite:///gpu.db", "--input", str(subset), "--output", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    gap = max(
        abs(predicted[i]["probs"][f][lab] - p)
        for i, s in stored.items()
        for f, ps in s["probs"].items()
        for lab, p in ps.items()
    )
    _report(predict_vs_evaluation_max_probability_gap=gap)
    assert all(predicted[i]["labels"] == s["predicted"] for i, s in stored.items()) and gap < 1e-3

    # 3. The export with --merge: a plain fp16 model that loads and runs.
    from transformers import AutoModelForCausalLM

    exported = tmp_path / "model"
    proc = run_main("export-model", "--storage", "sqlite:///gpu.db", "--merge", "--output", str(exported), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(str(exported / "merged"), dtype=torch.float16).cuda()
    assert merged.dtype == torch.float16
    with torch.no_grad():
        logits = merged(torch.tensor([[1, 2, 3]], device="cuda")).logits
    assert torch.isfinite(logits).all()
    _report(export=proc.stdout.strip())


def _estimate(model_dir, ua) -> dict:
    from transformers import AutoConfig

    from optuna_search.objectives._footprint import GiB, Setting, Shape, estimate

    p = ua["effective_params"]
    parts = estimate(
        Shape.of(AutoConfig.from_pretrained(str(model_dir))),
        Setting(
            batch_size=ua["batch_size"],
            max_length=512,
            lora_r=p["lora_r"],
            target_modules=tuple(p["target_modules"]),
            optim=p["optim"],
            eval_batch_size=16,
        ),
    )
    return {k: round(v / GiB, 2) for k, v in parts.items()}
