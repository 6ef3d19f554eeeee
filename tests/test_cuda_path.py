"""The flagship's CUDA path, as far as a CPU can run it (its GPU twin: tests/test_gpu.py).

Out of memory in each phase of a trial (loading, a training step, a validation point, the
final test evaluation), with the first attempt's model gone before the retry loads
another (automatic garbage collection off: only what the program frees is free); the
same predictions from evaluation, `predict` and an exported model at the trial's
precision (bf16 autocast on the CPU shows what fp16 does on a T4); the compute dtype for
a mocked GPU generation; a merge into the dequantised NF4 weights, in 16 bits, with its
size said before writing; the kaggle-t4 preset's training settings on a tiny model; DDP
ranks that stop at the same step when only one of them is asked to; right-padded
training batches; no hub lookup when a checkpoint is saved."""

import gc
import json
import os
import shutil
import subprocess
import sys
import weakref

import optuna
import pytest
import torch
from conftest import FAST, REPO, run_main
from optuna.trial import TrialState

pytestmark = pytest.mark.slow


def _study(work, name="demo"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'optuna-search-demo.db'}")


def _one_point(*extra):
    """One demo point of 20 optimizer steps (160 examples), a checkpoint every 10."""
    return [
        "run",
        *FAST,
        "--set",
        "study.grid={lora_r=[4]}",
        "--set",
        "train.epochs=1",
        "--set",
        "data.train_samples=160",
        *extra,
    ]


class _Models:
    """Wraps the model loader: before each load, every model loaded earlier must be gone."""

    def __init__(self, monkeypatch):
        from optuna_search.objectives import _qlora

        self.refs, self.alive_at_load = [], []
        real = _qlora.load_lora_model

        def load(*a, **kw):
            self.alive_at_load.append(sum(r() is not None for r in self.refs))
            model, dtype = real(*a, **kw)
            self.refs.append(weakref.ref(model))
            return model, dtype

        monkeypatch.setattr(_qlora, "load_lora_model", load)


def _oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


@pytest.mark.parametrize("phase", ["load", "train", "validation", "test"])
def test_out_of_memory_in_each_phase_frees_the_model_and_retries_what_that_phase_needs(
    tmp_path, demo_cache, monkeypatch, phase
):
    from transformers import Trainer

    from optuna_search.objectives import _evaluate, _qlora
    from optuna_search.search.front._cli import main

    models = _Models(monkeypatch)
    raised = []
    requests = []
    real_call = _qlora.QLoRAObjective._run

    def remember(self, request, hooks):
        requests.append(request)
        return real_call(self, request, hooks)

    monkeypatch.setattr(_qlora.QLoRAObjective, "_run", remember)
    if phase == "load":
        real_load = _qlora.load_lora_model

        def load_once_fails(*a, **kw):
            if not raised:
                raised.append(phase)
                raise _oom()
            return real_load(*a, **kw)

        monkeypatch.setattr(_qlora, "load_lora_model", load_once_fails)
    elif phase == "train":
        real_step = Trainer.training_step

        def step(self, *a, **kw):
            if self.args.per_device_train_batch_size > 4 and self.state.global_step >= 12:
                raised.append(phase)
                raise _oom()
            return real_step(self, *a, **kw)

        monkeypatch.setattr(Trainer, "training_step", step)
    else:
        real_eval = _evaluate.evaluate

        def evaluate(model, tokenizer, encoder, examples, **kw):
            which = requests[-1].test_examples if phase == "test" else requests[-1].validation_examples
            if examples is which and kw["batch_size"] > 25:
                raised.append(phase)
                raise _oom()
            return real_eval(model, tokenizer, encoder, examples, **kw)

        monkeypatch.setattr(_evaluate, "evaluate", evaluate)
    monkeypatch.chdir(tmp_path)
    gc.disable()  # only what the program collects is collected
    try:
        # bf16 mixed precision: accelerate wraps forward in autocast, a reference cycle
        # (model -> its forward -> model) as on a GPU with fp16.
        assert main(_one_point("--set", "eval.batch_size=50", "--set", "model.compute_dtype='bfloat16'")) == 0
    finally:
        gc.enable()
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.COMPLETE and raised
    assert models.alive_at_load == [0] * len(models.alive_at_load) and len(models.alive_at_load) >= (
        1 if phase == "load" else 2
    )
    (retry,) = t.user_attrs["oom_retries"]
    assert retry["phase"] == {"validation": "evaluate", "test": "evaluate"}.get(phase, phase)
    if phase == "train":
        assert (t.user_attrs["batch_size"], t.user_attrs["gradient_accumulation"]) == (4, 2)  # demo: 8 x 1
        assert t.user_attrs["resumed_from_step"] == 0  # another batch replays another data order: from the start
    if phase in ("validation", "test"):
        # Training is kept: the retry resumes from its checkpoint with half the evaluation batch.
        assert t.user_attrs["eval_batch_size"] == 25 and t.user_attrs["batch_size"] == 8
        assert t.user_attrs["resumed_from_step"] > 0


def test_out_of_memory_loading_twice_fails_the_point_with_the_reason(tmp_path, demo_cache, monkeypatch, capsys):
    from optuna_search.objectives import _qlora
    from optuna_search.search.front._cli import main

    monkeypatch.setattr(_qlora, "load_lora_model", lambda *a, **kw: (_ for _ in ()).throw(_oom()))
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 1
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.FAIL and "the model does not fit this device" in t.user_attrs["error"]
    assert [r["phase"] for r in t.user_attrs["oom_retries"]] == ["load", "load"]  # the first and the one that gave up


def test_a_model_its_caller_drops_during_a_study_is_freed_when_the_study_ends(tmp_path, demo_cache, monkeypatch):
    """A study freezes what lives on before its trials (the collector then skips the
    libraries' objects); a process that lives on after it (the Python API, a notebook)
    must still get back what it dropped meanwhile: here a model of the caller's, held in
    a reference cycle as accelerate's hooks hold one, dropped at the trial's second step."""
    import logging

    from optuna_search.objectives import _memory
    from optuna_search.search.front._cli import main

    _memory.thaw()  # as a fresh process is (an earlier test may have called a trial directly)

    class CallersModel:
        pass

    model = CallersModel()
    model.hook = model  # a cycle: only the collector frees it
    gone = weakref.ref(model)
    holder = [model]
    del model

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if " step 2/" in record.getMessage():
                holder.clear()
            return True

    drop = _Drop()
    logging.getLogger("optuna_search").addFilter(drop)
    monkeypatch.chdir(tmp_path)
    try:
        assert main([*_one_point(), "--progress-interval", "0"]) == 0
    finally:
        logging.getLogger("optuna_search").removeFilter(drop)
    assert not holder and gone() is None
    assert gc.get_freeze_count() == 0  # the process is as it was before the study


def test_evaluation_predict_and_export_agree_at_the_trials_precision(tmp_path, demo_cache):
    """bf16: Trainer trains under autocast (accelerate wraps forward); evaluation, `predict`
    and the exported model all score at bf16 too, so they give the same probabilities
    (to 1e-5 for the same batches: at 16 bits, other padding changes the last digits)."""
    from optuna_search.objectives._demo_data import ensure_demo_data

    args = [*_one_point("--set", "eval.method='score'", "--set", "model.compute_dtype='bfloat16'")]
    proc = run_main(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(tmp_path)
    (t,) = study.get_trials()
    assert t.user_attrs["compute_dtype"] == "bfloat16"
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "optuna-search-demo-artifacts"))
    with store.open_reader(t.user_attrs["predictions_artifact_id"]) as fh:
        stored = {r["id"]: r for r in map(json.loads, fh.read().decode().splitlines())}
    # The evaluated examples, in the order (and so the batches) the evaluation used.
    rows = {r["id"]: r for r in map(json.loads, (ensure_demo_data() / "test.jsonl").read_text().splitlines())}
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(rows[e["id"]]) + "\n" for e in study.user_attrs["eval_subset"]))
    out = tmp_path / "p.jsonl"
    assert (
        run_main("predict", "--preset", "demo", "--input", str(subset), "--output", str(out), cwd=tmp_path).returncode
        == 0
    )
    exported = tmp_path / "model"
    assert run_main("export-model", "--preset", "demo", "--output", str(exported), cwd=tmp_path).returncode == 0
    out2 = tmp_path / "p2.jsonl"
    assert (
        run_main(
            "predict", "--model", str(exported), "--input", str(subset), "--output", str(out2), cwd=tmp_path
        ).returncode
        == 0
    )
    for path in (out, out2):
        predicted = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
        assert set(predicted) == set(stored)
        for i, s in stored.items():
            assert predicted[i]["labels"] == s["predicted"], (path.name, i)
            for f, probs in s["probs"].items():
                for label, p in probs.items():
                    assert predicted[i]["probs"][f][label] == pytest.approx(p, abs=1e-5), (path.name, i, f, label)


@pytest.mark.parametrize(
    "capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_auto_compute_dtype_follows_the_gpus_generation(monkeypatch, capability, expected):
    """A T4 (7.5) emulates bf16 (``is_bf16_supported()`` says True there): fp16 for it."""
    from optuna_search.objectives._model import pick_compute_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **kw: capability)
    assert pick_compute_dtype("auto") == expected
    assert pick_compute_dtype("float32") == torch.float32


def _trained(scored_study, tmp_path):
    """A copy of the tests' trained study (the merge needs a trained adapter, not a new one)."""
    work = tmp_path / "study"
    shutil.copytree(scored_study, work)
    return work


def test_merge_dequantises_the_nf4_base_in_16_bits_and_says_its_size_first(scored_study, tmp_path):
    """The adapter is merged into the NF4 weights it was trained against (dequantised),
    not the original ones; the merged model is 16-bit; its size is said before writing,
    the process's peak memory after."""
    import bitsandbytes.functional as bnbf
    from safetensors.torch import load_file

    from optuna_search.objectives._demo import ensure_demo_model

    work = _trained(scored_study, tmp_path)
    out = tmp_path / "model"
    proc = run_main("export-model", "--preset", "demo", "--merge", "--output", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.index("--merge: writing about") < len(proc.stderr) and "peak process memory" in proc.stdout
    merged = load_file(str(next((out / "merged").glob("*.safetensors"))))
    original = load_file(str(ensure_demo_model() / "model.safetensors"))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert merged[key].dtype in (torch.float16, torch.bfloat16)
    a = adapter[next(k for k in adapter if "layers.0.self_attn.q_proj.lora_A" in k)].float()
    b = adapter[next(k for k in adapter if "layers.0.self_attn.q_proj.lora_B" in k)].float()
    config = json.loads((out / "adapter_config.json").read_text())
    delta = (b @ a) * config["lora_alpha"] / config["r"]
    w = original[key].float()  # the demo trains in fp32 on a CPU: its base was quantized from fp32
    q, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    nf4 = bnbf.dequantize_4bit(q, state).float()
    got = merged[key].float()
    assert (got - (nf4 + delta)).abs().max() < 1e-3 < (got - (w + delta)).abs().max()  # 16-bit rounding, vs NF4's error


def test_merge_without_room_is_refused_before_writing(scored_study, tmp_path, monkeypatch):
    from optuna_search.search.use import _export_model

    work = _trained(scored_study, tmp_path)
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(p)._replace(free=1000))
    out = tmp_path / "model"
    proc = run_main("export-model", "--preset", "demo", "--merge", "--output", str(out), cwd=work)
    assert proc.returncode == 2 and "only 0.0 GiB are free there" in proc.stderr and "without --merge" in proc.stderr
    assert not out.exists() and _export_model.MERGE_WARN_BYTES > 0


def test_the_kaggle_t4_training_settings_run_on_a_tiny_model(tmp_path, demo_cache):
    """The flagship preset's [train] and [lora] keys (gradient checkpointing, paged 8-bit
    AdamW, cosine schedule, warm-up, accumulation 4, dropout 0.1) and fp16 compute dtype,
    on the demo model: the loss is finite, checkpoints are written and the trial resumes."""
    from optuna_search.search.front._config import read_preset

    preset = read_preset("kaggle-t4")
    sets = [f"train.{k}={json.dumps(v)}" for k, v in preset["train"].items() if k not in ("checkpoint_steps",)]
    sets += [f"lora.{k}={json.dumps(v)}" for k, v in preset["lora"].items()]
    sets += ["model.compute_dtype='float16'", "train.epochs=1", "train.checkpoint_steps=5", "train.learning_rate=5e-3"]
    args = [
        "run",
        *FAST,
        "--set",
        "study.grid={lora_r=[4]}",
        "--set",
        "data.train_samples=192",
        *[a for s in sets for a in ("--set", s)],
    ]
    proc = run_main(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (t,) = _study(tmp_path).get_trials()
    assert t.user_attrs["effective_params"]["optim"] == "paged_adamw_8bit"
    assert all(loss == loss and abs(loss) < 1e4 for loss in t.user_attrs["train_loss_per_epoch"])
    assert t.user_attrs["optimizer_steps"] == t.user_attrs["max_steps"] == 12  # 192 / (4 x 4)


def test_ddp_ranks_stop_at_the_same_step_when_one_rank_is_asked(tmp_path, demo_cache):
    """Two gloo ranks train with the study's callback; only rank 1 is asked to stop (its
    own SIGTERM, or its own clock past the deadline), at step 3. Both stop at step 3 and
    rank 0 checkpoints there: no rank waits in an all-reduce for a rank that left."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "tests" / "ddp_stop_worker.py"),
            str(out),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [3, 3] and ranks[0]["max_steps"] > 3
    assert [r["stopped_on_request"] for r in ranks] == [True, True]
    assert (out / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()


def test_training_batches_are_padded_on_the_right(demo_model_dir):
    from transformers import AutoTokenizer

    from optuna_search.objectives._train import Collator

    tok = AutoTokenizer.from_pretrained(str(demo_model_dir))
    tok.padding_side = "left"  # as Mistral's tokenizer comes
    batch = Collator(tok)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "length": 3},
            {"input_ids": [5], "attention_mask": [1], "labels": [5], "length": 1},
        ]
    )
    assert batch["input_ids"][1].tolist() == [5, tok.pad_token_id, tok.pad_token_id]
    assert batch["attention_mask"][1].tolist() == [1, 0, 0] and batch["labels"][1].tolist() == [5, -100, -100]
    assert tok.padding_side == "left"  # generation keeps its side


def test_expandable_segments_are_set_before_cuda_starts_unless_the_user_chose(monkeypatch):
    from optuna_search.objectives._memory import prefer_expandable_segments

    env = {}
    prefer_expandable_segments(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    prefer_expandable_segments(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\nfrom optuna_search.search.front._cli import main\n"
            "sys.argv = ['x']\nos.environ.pop('PYTORCH_CUDA_ALLOC_CONF', None)\ntry:\n  main(['--version'])\n"
            "except SystemExit:\n  pass\nprint(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip().endswith("expandable_segments:True"), out.stdout + out.stderr


def test_a_checkpoint_of_a_hub_model_asks_the_hub_nothing(tmp_path, demo_cache, monkeypatch):
    """peft's "auto" embedding check asks the hub about a hub id's config at every save;
    the study saves without it (it never trains embeddings)."""
    import peft.utils.other
    import peft.utils.save_and_load

    def no_network(*a, **kw):
        raise AssertionError(f"the hub was asked: {a}")

    monkeypatch.setattr(peft.utils.other, "check_file_exists_on_hf_hub", no_network)
    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", no_network)
    from optuna_search.objectives import _model

    real = _model.load_lora_model

    def as_if_from_the_hub(*a, **kw):
        model, dtype = real(*a, **kw)
        model.peft_config["default"].base_model_name_or_path = "mistralai/Mistral-7B-Instruct-v0.2"
        return model, dtype

    from optuna_search.objectives import _qlora

    monkeypatch.setattr(_qlora, "load_lora_model", as_if_from_the_hub)
    proc = run_main(*_one_point("--set", "train.checkpoint_steps=5"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
