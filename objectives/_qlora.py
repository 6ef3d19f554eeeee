"""QLoRA train-and-evaluate for one grid point of a causal-LM classification study.

Base model in 4-bit NF4 (bitsandbytes, double quantization), peft LoRA adapters, trained
with transformers' Trainer (checkpoints, fp16/bf16, gradient accumulation, callbacks),
then evaluated by *greedy* batched generation on the study's fixed evaluation subset.
Greedy decoding makes the score a deterministic function of the weights: sampling with a
temperature would make two evaluations of the same model disagree.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optuna_search.objectives._data import Dataset, Example
from optuna_search.objectives._metrics import Prediction, Scores, parse_prediction, score_predictions
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.search._errors import UserError

log = logging.getLogger("optuna_search")
# Seconds between progress lines during training (OPTUNA_SEARCH_PROGRESS_INTERVAL=0: every step).
PROGRESS_INTERVAL_S = float(os.environ.get("OPTUNA_SEARCH_PROGRESS_INTERVAL", "10"))


def resolve_model_source(name_or_path: str) -> str:
    """A local directory or a hub id; ``builtin:tiny-mistral`` builds the demo model."""
    if name_or_path == "builtin:tiny-mistral":
        from optuna_search.objectives._demo import ensure_demo_model

        return str(ensure_demo_model())
    if name_or_path.startswith("builtin:"):
        raise UserError(f"unknown builtin model {name_or_path!r}; the only builtin is 'builtin:tiny-mistral'")
    p = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or p.exists() or name_or_path.count("/") > 1
    if looks_local:
        if not p.exists():
            raise UserError(
                f"model.name_or_path '{name_or_path}' does not exist; give an existing local model "
                "directory or a hub id such as mistralai/Mistral-7B-Instruct-v0.2"
            )
        if not (p / "config.json").exists():
            raise UserError(
                f"model directory '{p}' has no config.json; point model.name_or_path at a folder "
                "written by save_pretrained (config.json, weights, tokenizer files)"
            )
        return str(p)
    return name_or_path


def check_model_available(model_cfg: Any) -> str:
    """Preflight: the model's config and tokenizer can be read (local dir, cache or hub)."""
    source = resolve_model_source(model_cfg.name_or_path)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(
            source, revision=model_cfg.revision or None, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load model {model_cfg.name_or_path!r} ({first}); check the hub id and revision, "
            "run `huggingface-cli login` for gated models, or give a local directory"
        ) from None
    return source


def pick_compute_dtype(setting: str):
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(source: str, model_cfg: Any):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, revision=model_cfg.revision or None, trust_remote_code=model_cfg.trust_remote_code
    )
    if tok.pad_token_id is None:
        # Mistral has no pad token; padded positions are masked out, so any id works.
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def load_lora_model(source: str, model_cfg: Any, params: dict[str, Any], gradient_checkpointing: bool):
    """Quantized base model + fresh LoRA adapters for this grid point."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = pick_compute_dtype(model_cfg.compute_dtype)
    kwargs: dict[str, Any] = {
        "revision": model_cfg.revision or None,
        "trust_remote_code": model_cfg.trust_remote_code,
        "dtype": dtype,
    }
    if model_cfg.quantization != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_cfg.quantization,
            bnb_4bit_use_double_quant=model_cfg.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    if torch.cuda.is_available():
        # One whole model copy per process/GPU (the usual QLoRA placement).
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if model_cfg.quantization != "none":
        keep_4bit_layers_trainable_on_cpu(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            # Non-reentrant checkpointing is the variant that works under DDP too.
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = LoraConfig(
        r=params["lora_r"],
        lora_alpha=params["lora_alpha"],
        lora_dropout=params["lora_dropout"],
        target_modules=params["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(f"LoRA target_modules {params['target_modules']} do not fit this model ({e}); fix lora.target_modules") from None
    return model, dtype


def keep_4bit_layers_trainable_on_cpu(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with avx512_bf16, a ``Linear4bit`` run in eval mode without gradients (our
    validation pass, ``generate``) repacks its weight into an inference-only layout, and
    from then on the gradient *through* that frozen layer nearly vanishes: the LoRA
    adapters below it stop learning for the rest of training (measured on the demo
    model: layer 0's lora_A gradient norm 0.158 before a validation pass, 0.011 after).
    Returns how many layers were switched."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class TrialResult:
    scores: Scores
    predictions: list[Prediction]
    train_loss_per_epoch: list[float]
    eval_loss_per_epoch: list[float]
    trainable_params: int
    train_seconds: float
    eval_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    resumed_from_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def at_epoch_end(epoch: float | None) -> bool:
    """Trainer's fractional epoch counter sits on a whole number only at an epoch's end."""
    return epoch is not None and abs(epoch - round(epoch)) < 1e-6


def losses_per_epoch(log_history: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean training loss and the eval loss of each epoch, from Trainer's log history.

    The history is saved in every checkpoint, so the curves survive a resume.
    """
    train: dict[int, list[float]] = {}
    evals: dict[int, float] = {}
    for rec in log_history:
        epoch = rec.get("epoch")
        if epoch is None:
            continue
        # A step logged at epoch 1.0 belongs to epoch 1 (index 0): ceil(epoch) - 1.
        idx = max(0, math.ceil(round(epoch, 6)) - 1)
        if "loss" in rec:
            train.setdefault(idx, []).append(float(rec["loss"]))
        if "eval_loss" in rec and at_epoch_end(epoch):
            evals[idx] = float(rec["eval_loss"])
    return (
        [sum(v) / len(v) for _, v in sorted(train.items())],
        [v for _, v in sorted(evals.items())],
    )


class BudgetExhausted(Exception):
    """Training stopped at a checkpoint because the session's time budget ran out."""


class OutOfMemory(Exception):
    """The accelerator ran out of memory at the given per-device batch size."""


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def _make_callback(
    on_epoch_eval: Callable[[int, float], None],
    progress: Callable[[str], None],
    deadline: float | None,
):
    from transformers import TrainerCallback

    class StudyCallback(TrainerCallback):
        """Reports per-epoch eval loss to Optuna, logs progress with an ETA, and stops
        at a checkpoint before the session's deadline."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.first_step: int | None = None
            self.last_log = 0.0
            self.step_seconds = 0.0
            self.stopped_for_budget = False
            self.save_after_eval = False

        def on_step_end(self, args, state, control, **kw):
            if self.first_step is None:
                self.first_step = state.global_step - 1
            now = time.monotonic()
            done = state.global_step - self.first_step
            self.step_seconds = (now - self.t0) / max(done, 1)
            # A checkpoint due on an epoch's last step is written after that epoch's
            # validation pass instead, so that a resume from it never misses the pass.
            if control.should_save and at_epoch_end(state.epoch):
                control.should_save = False
                self.save_after_eval = True
            # Stop while there is still time for a few more steps' worth of work (the
            # checkpoint write): the next session resumes from exactly this step.
            if deadline is not None and state.global_step < state.max_steps:
                if now + max(5.0, 3 * self.step_seconds) >= deadline:
                    self.stopped_for_budget = True
                    control.should_save = True
                    control.should_training_stop = True
                    progress(f"time budget reached at step {state.global_step}/{state.max_steps}: checkpointing and stopping")
                    return
            if now - self.last_log < PROGRESS_INTERVAL_S and state.global_step < state.max_steps:
                return
            self.last_log = now
            rate = done / max(now - self.t0, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
            loss = next((r["loss"] for r in reversed(state.log_history) if "loss" in r), None)
            progress(
                f"epoch {state.epoch:.2f}/{args.num_train_epochs:g} step {state.global_step}/{state.max_steps}"
                + (f" loss {loss:.4f}" if loss is not None else "")
                + f" ETA {format_seconds(eta)}"
            )

        def on_epoch_end(self, args, state, control, **kw):
            # Trainer treats a stop mid-epoch as an epoch end; that partial epoch gets no
            # validation pass (the resumed run evaluates it when the epoch really ends).
            if self.stopped_for_budget:
                control.should_evaluate = False
            if self.save_after_eval:
                control.should_save = True  # Trainer evaluates, then saves, in one go
                self.save_after_eval = False

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if metrics and "eval_loss" in metrics and at_epoch_end(state.epoch):
                on_epoch_eval(max(1, round(state.epoch)), float(metrics["eval_loss"]))

    return StudyCallback()


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train_and_evaluate(
    config: Any,
    params: dict[str, Any],
    data: Dataset,
    eval_examples: list[Example],
    checkpoint_dir: Path,
    *,
    on_epoch_eval: Callable[[int, float], None] = lambda e, l: None,
    progress: Callable[[str], None] = lambda m: None,
    deadline: float | None = None,
) -> TrialResult | None:
    """Train one grid point (resuming from its last checkpoint if there is one) and
    evaluate it. ``params`` may carry ``batch_size``/``gradient_accumulation`` overrides
    (the OOM fallback). Raises BudgetExhausted when stopped for ``deadline`` (a
    ``time.monotonic()`` value) and OutOfMemory when the batch does not fit."""
    import torch
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    source = resolve_model_source(config.model.name_or_path)
    tokenizer = load_tokenizer(source, config.model)
    encoder = PromptEncoder(tokenizer, data.fields, data.vocab, config.model.max_length)
    train_ds = encoder.to_hf_dataset(data.train.examples)
    val_ds = encoder.to_hf_dataset(data.validation.examples)

    cuda = torch.cuda.is_available()
    # Under torchrun (train.gpus_per_trial > 1) each rank trains on its own GPU and only
    # rank 0 evaluates and writes the adapter.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    is_main = int(os.environ.get("RANK", "0")) == 0
    if cuda and distributed:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = trainer = None
    try:
        t0 = time.monotonic()
        # Seed before the adapters are initialised: a grid point's result must not depend
        # on which trials ran before it in this process.
        from transformers import set_seed

        set_seed(config.train.seed)
        model, dtype = load_lora_model(source, config.model, params, config.train.gradient_checkpointing)
        trainable = count_trainable(model)
        progress(f"loaded base model, {trainable:,} trainable LoRA parameters (r={params['lora_r']}, alpha={params['lora_alpha']:g})")
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        args = TrainingArguments(
            output_dir=str(checkpoint_dir),
            per_device_train_batch_size=params.get("batch_size", config.train.batch_size),
            per_device_eval_batch_size=params.get("batch_size", config.train.batch_size),
            gradient_accumulation_steps=params.get("gradient_accumulation", config.train.gradient_accumulation),
            num_train_epochs=params["epochs"],
            learning_rate=params["learning_rate"],
            lr_scheduler_type=config.train.lr_scheduler,
            warmup_steps=config.train.warmup_ratio,
            weight_decay=config.train.weight_decay,
            seed=config.train.seed,
            data_seed=config.train.seed,
            fp16=cuda and dtype == torch.float16,
            bf16=cuda and dtype == torch.bfloat16,
            use_cpu=not cuda,
            logging_strategy="steps",
            logging_steps=1,
            eval_strategy="epoch",
            save_strategy="steps",
            save_steps=config.train.checkpoint_steps,
            save_total_limit=2,
            train_sampling_strategy="group_by_length",
            length_column_name="length",
            remove_unused_columns=False,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            gradient_checkpointing=False,  # already set up by prepare_model_for_kbit_training
            # Every LoRA parameter gets a gradient; the frozen 4-bit base needs no search.
            ddp_find_unused_parameters=False if distributed else None,
        )
        collator = _Collator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
        callback = _make_callback(on_epoch_eval, progress, deadline)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=collator,
            callbacks=[callback],
        )
        # Our callback logs progress to stderr; Trainer's printer would dump dicts to stdout.
        trainer.remove_callback(PrinterCallback)
        last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.exists() else None
        resumed_from = 0
        if last:
            resumed_from = int(Path(last).name.split("-")[-1])
            progress(f"resuming from checkpoint {last} (step {resumed_from})")
        try:
            trainer.train(resume_from_checkpoint=last)
        except Exception as e:
            if is_out_of_memory(e):
                raise OutOfMemory(str(e)) from e
            raise
        if callback.stopped_for_budget:
            raise BudgetExhausted(f"stopped at step {trainer.state.global_step}/{trainer.state.max_steps}")
        train_loss, eval_loss = losses_per_epoch(trainer.state.log_history)
        if len(eval_loss) < len(train_loss):
            # Resumed from a checkpoint written before the last validation pass.
            metrics = trainer.evaluate()
            on_epoch_eval(len(train_loss), float(metrics["eval_loss"]))
            train_loss, eval_loss = losses_per_epoch(trainer.state.log_history)
        train_seconds = time.monotonic() - t0
        if not is_main:
            return None

        t1 = time.monotonic()
        progress(f"evaluating on {len(eval_examples)} fixed test examples (greedy)")
        preds = generate_predictions(model, tokenizer, encoder, eval_examples, config.eval.batch_size, data.fields)
        eval_seconds = time.monotonic() - t1
        scores = score_predictions(preds, data.fields, data.vocab)
        model.save_pretrained(str(checkpoint_dir / "final-adapter"))

        if cuda:
            peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
        return TrialResult(
            scores=scores,
            predictions=preds,
            train_loss_per_epoch=train_loss,
            eval_loss_per_epoch=eval_loss,
            trainable_params=trainable,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            peak_memory_mb=peak,
            peak_memory_kind=kind,
            resumed_from_step=resumed_from,
            extra={"compute_dtype": str(dtype).replace("torch.", "")},
        )
    finally:
        # Several trials run in one process: release the model before the next one loads.
        del trainer, model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def remove_intermediate_checkpoints(checkpoint_dir: Path) -> None:
    """After a COMPLETE trial only the final adapter is worth its disk space."""
    for p in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


class _Collator:
    """Dynamic padding (pad to the longest in the batch), dropping the length column
    that only the length-grouped sampler needs."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, features):
        return self.inner([{k: v for k, v in f.items() if k != "length"} for f in features])


def generate_predictions(model, tokenizer, encoder: PromptEncoder, examples: list[Example], batch_size: int, fields: list[str]) -> list[Prediction]:
    """Greedy, batched generation; prompts sorted by length so batches pad little."""
    import torch

    model.eval()
    device = next(p.device for p in model.parameters())
    pad = tokenizer.pad_token_id
    prompts = [encoder.encode_prompt(e)[0] for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    raw: dict[int, str] = {}
    was_cache = getattr(model.config, "use_cache", True)
    model.config.use_cache = True
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(prompts[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # left padding: generation continues at the right edge
                    ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]) :] = 1
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=encoder.max_answer_tokens + 4,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                )
                for row, i in enumerate(idx):
                    raw[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    finally:
        model.config.use_cache = was_cache
    return [parse_prediction(examples[i], raw[i], fields) for i in range(len(examples))]


def environment_fingerprint() -> dict[str, str]:
    import torch

    info = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    for mod in ("transformers", "peft", "bitsandbytes", "optuna", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is just not reported
            info[mod] = "missing"
    info["cpu_count"] = str(os.cpu_count())
    return info
