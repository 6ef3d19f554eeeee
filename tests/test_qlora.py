"""The real QLoRA path (bitsandbytes NF4 on CPU, peft LoRA, transformers Trainer) on a
tiny Mistral-architecture model built in-process."""

import dataclasses
import math

import pytest
import torch

from optuna_search.core import UserError
from optuna_search.objectives._model import count_trainable, load_lora_model, resolve_model_source
from optuna_search.objectives._train import build_training_args, losses_per_epoch
from optuna_search.search.front._config import load_config


def _params(r=8, modules=("q_proj", "k_proj", "v_proj", "o_proj"), *sets, **changes):
    c = load_config(preset="demo", sets=["lora.dropout=0.0", "train.warmup_ratio=0.0", "train.epochs=1", *sets])
    return dataclasses.replace(c.trial_params({"lora_r": r, "target_modules": ",".join(modules)}), **changes)


def test_loads_nf4_base_with_lora_from_a_local_directory(demo_model_dir):
    import bitsandbytes as bnb

    cfg = load_config(preset="demo").model
    model, dtype = load_lora_model(
        resolve_model_source(str(demo_model_dir)), cfg, _params(8), gradient_checkpointing=False
    )
    assert dtype == torch.float32  # CPU
    base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base, bnb.nn.Linear4bit)
    assert base.weight.quant_type == "nf4"
    assert base.weight.quant_state.nested  # double quantization
    # Trainable parameters are measured: r * (in + out) per adapted projection.
    c = model.config
    head = c.hidden_size // c.num_attention_heads
    per_layer = sum(
        8 * (i + o)
        for i, o in [
            (c.hidden_size, c.num_attention_heads * head),
            (c.hidden_size, c.num_key_value_heads * head),
            (c.hidden_size, c.num_key_value_heads * head),
            (c.num_attention_heads * head, c.hidden_size),
        ]
    )
    assert count_trainable(model) == per_layer * c.num_hidden_layers
    assert model.peft_config["default"].lora_alpha == 32


def test_lora_weights_change_and_the_4_bit_base_stays_frozen(demo_model_dir):
    from transformers import Trainer, TrainingArguments

    from optuna_search.objectives._data import load_split
    from optuna_search.objectives._demo_data import ensure_demo_data
    from optuna_search.objectives._model import load_tokenizer
    from optuna_search.objectives._prompt import PromptEncoder
    from optuna_search.objectives._train import Collator

    cfg = load_config(preset="demo")
    fields = list(cfg.data.fields)
    split = load_split("train", str(ensure_demo_data() / "train.jsonl"), fields=fields)
    vocab = {f: sorted(split.label_counts(f)) for f in fields}
    tok = load_tokenizer(str(demo_model_dir), cfg.model)
    ds = PromptEncoder(tok, fields, vocab, 128).to_hf_dataset(split.examples[:64])
    model, _ = load_lora_model(str(demo_model_dir), cfg.model, _params(8), gradient_checkpointing=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(demo_model_dir.parent / "t"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=Collator(tok))
    trainer.train()
    # Whether the loss falls in 8 steps is the CPU's business; that every step trained the
    # adapters (and only them) is not.
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    # The 4-bit base stays frozen.
    assert torch.equal(frozen, model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight)


def test_losses_per_epoch_from_log_history():
    hist = [
        {"loss": 2.0, "epoch": 0.5, "step": 1},
        {"loss": 1.0, "epoch": 1.0, "step": 2},
        {"eval_loss": 1.5, "epoch": 1.0, "step": 2},
        {"loss": 0.5, "epoch": 1.5, "step": 3},
        {"loss": 0.3, "epoch": 2.0, "step": 4},
        {"eval_loss": 1.1, "epoch": 2.0, "step": 4},
        {"train_loss": 0.9, "epoch": 2.0, "step": 4},
    ]
    assert losses_per_epoch(hist) == ([1.5, 0.4], [1.5, 1.1])


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_source(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model_source(str(tmp_path / "empty"))


def _first_adapter_grad(model, ids) -> float:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.grad.norm().item()


def test_gradients_reach_the_first_layers_adapters_after_a_validation_pass(demo_model_dir):
    """bitsandbytes repacks 4-bit weights for CPU inference on avx512_bf16 machines the
    first time a layer runs in eval mode without gradients; unless the loader prevents
    it, every epoch after the first validation pass trains with vanishing gradients."""
    cfg = load_config(preset="demo").model
    torch.manual_seed(0)
    model, _ = load_lora_model(str(demo_model_dir), cfg, _params(8), gradient_checkpointing=False)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # lora_B starts at zero; give lora_A a gradient to measure
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(4, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    before = _first_adapter_grad(model, ids)
    model.eval()
    with torch.no_grad():  # what the per-epoch validation pass and generate() do
        model(input_ids=ids)
    after = _first_adapter_grad(model, ids)
    assert before > 0.01
    assert after == pytest.approx(before, rel=1e-3)


def test_dora_rslora_independent_alpha_and_all_linear_reach_peft(demo_model_dir):
    import bitsandbytes as bnb

    cfg = load_config(preset="demo").model
    p = _params(4, ("all-linear",), "lora.use_dora=true", "lora.use_rslora=true", "lora.alpha=12")
    model, _ = load_lora_model(str(demo_model_dir), cfg, p, gradient_checkpointing=False)
    lc = model.peft_config["default"]
    assert (lc.r, lc.lora_alpha, lc.use_dora, lc.use_rslora) == (4, 12.0, True, True)
    adapted = {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), bnb.nn.Linear4bit)
    }
    assert adapted == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }  # all-linear, not lm_head
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(12 / 4**0.5)  # rsLoRA: alpha / sqrt(r)
    assert "default" in q.lora_magnitude_vector  # DoRA


def test_trainer_knobs_reach_training_arguments(tmp_path):
    c = load_config(
        preset="demo",
        sets=[
            "train.optim='adafactor'",
            "train.max_grad_norm=0.3",
            "train.lr_scheduler='linear'",
            "train.batch_size=2",
            "train.gradient_accumulation=8",
            "train.weight_decay=0.01",
        ],
    )
    args = build_training_args(
        str(tmp_path), c.trial_params({"lora_r": 8}), c.train, cuda=False, dtype=torch.float32, distributed=False
    )
    assert args.optim.value == "adafactor" and args.max_grad_norm == 0.3 and args.lr_scheduler_type.value == "linear"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.weight_decay) == (2, 8, 0.01)
    assert args.learning_rate == c.train.learning_rate and args.num_train_epochs == c.train.epochs


def test_targets_the_model_lacks_are_refused_before_anything_is_written(demo_model_dir):
    from optuna_search.objectives._model import check_lora_targets

    cfg = load_config(preset="demo").model
    with pytest.raises(UserError) as e:
        check_lora_targets(str(demo_model_dir), cfg, [_params(8, ("q_proj", "attn.c_attn"))])
    assert "c_attn" in str(e.value) and "its linear layers: down_proj, gate_proj" in str(e.value)
    check_lora_targets(str(demo_model_dir), cfg, [_params(8, ("all-linear",))])


def test_gradient_checkpointing_is_on_without_transformers_deprecation_warning(demo_model_dir):
    """Seen: every kaggle-t4 trial printed transformers' FutureWarning that
    `gradient_checkpointing_enable` will be removed (peft's k-bit preparation calls it)."""
    import warnings

    cfg = load_config(preset="demo").model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load_lora_model(str(demo_model_dir), cfg, _params(8), gradient_checkpointing=True)
    deprecated = [str(w.message) for w in caught if "gradient_checkpointing_enable" in str(w.message)]
    assert deprecated == []
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    batch = torch.randint(0, base.config.vocab_size, (2, 12))
    model.train()
    model(input_ids=batch, labels=batch).loss.backward()  # gradients reach the adapters through checkpointing
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
