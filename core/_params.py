"""The searchable hyperparameters: one rules table, and the parameters of one trial.

Each :class:`Hyperparameter` says, in one entry, everything the tool knows about it: its
name in ``study.grid`` / ``study.search_space``, its type, the check of a value, whether
it may be searched as a range (and on a log scale), the config key that holds its fixed
value, how Optuna stores it, and which ``peft.LoraConfig`` / ``TrainingArguments``
arguments it sets. :class:`TrialParams` (the effective hyperparameters of one trial),
the config's validation and the Optuna distributions are all derived from the table, so
adding a hyperparameter is one entry here (plus the config field holding its default).

Optuna stores categorical choices as scalars, so a list of LoRA target modules travels as
``"q_proj,v_proj"`` in trial params (``encode`` / ``decode``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

WSD = "warmup_stable_decay"
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", WSD)
"""Learning-rate schedules (transformers' names). ``warmup_stable_decay``: warm-up, a
constant rate, then a 1-sqrt decay over ``train.decay_ratio`` of training (its constant
phase can be cut anywhere: a rung's cool-down branch starts from the rate the run has)."""
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
)
"""Optimizers (transformers' names). The 8-bit and paged ones are bitsandbytes' (on a CPU they
run unpaged; on a GPU, bitsandbytes pages only tensors of 100,000 elements or more)."""
ALL_LINEAR = "all-linear"
SINCE_THE_FIRST_VERSION = object()
"""A hyperparameter's ``legacy``: it has been in every version (no older study lacks it)."""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(upper: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= upper:
            return f"must be an integer from 1 to {upper:,}"
        return None

    return check


def number_in(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not _finite(v):
            return "must be a finite number"
        if (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
            return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        return None

    return check


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def modules_from_param(value: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return list(value)


def modules_to_param(value: str | list[str] | tuple[str, ...]) -> str:
    return value if isinstance(value, str) else ",".join(value)


def check_modules(v: Any) -> str | None:
    modules = modules_from_param(v) if isinstance(v, (str, list, tuple)) else None
    if not modules or not all(isinstance(s, str) and s.strip() for s in modules):
        return 'must be a non-empty list of module names, e.g. ["q_proj", "v_proj"], or "all-linear"'
    if ALL_LINEAR in modules and len(modules) > 1:
        return '"all-linear" stands alone (it means every linear layer but the output head)'
    return None


def _identity(v: Any) -> Any:
    return v


def _modules_kwarg(v: tuple[str, ...]) -> Any:
    return ALL_LINEAR if list(v) == [ALL_LINEAR] else list(v)


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    """Key in study.grid / study.search_space, in Optuna's params and in TrialParams."""
    type: type
    """int, float, bool, str, or tuple (module lists)."""
    config: str
    """The config key that holds the value when it is not searched, e.g. "lora.r"."""
    check: Callable[[Any], str | None]
    """None when a value is allowed, else what is wrong with it."""
    example: str
    """How a user writes a grid or space for it (shown in error messages)."""
    ranges: bool = True
    """May be searched as a range table {low, high}; else as a list of choices only."""
    log: bool = False
    """A log-uniform range makes sense (learning rates)."""
    peft: tuple[str, ...] = ()
    """``peft.LoraConfig`` arguments it sets."""
    trainer: tuple[str, ...] = ()
    """``transformers.TrainingArguments`` arguments it sets."""
    to_kwarg: Callable[[Any], Any] = _identity
    """Its value as those arguments take it."""
    encode: Callable[[Any], Any] = _identity
    """Its value as Optuna stores it (scalars only)."""
    decode: Callable[[Any], Any] = _identity
    """The value back from Optuna's params."""
    derive: Callable[[Any, dict[str, Any]], Any] | None = None
    """The value when it is not searched, from the config and the values before it (in
    table order); default: the config key's value."""
    doc: str = ""
    legacy: Any = SINCE_THE_FIRST_VERSION
    """The value a study created before this hyperparameter existed trained with: a stored
    config that lacks its key reads it so (``core._identity.with_legacy_values``), and a
    trial's note shows it. A hyperparameter added later must say it."""


def _alpha(config: Any, values: dict[str, Any]) -> float:
    return float(config.lora.alpha) if config.lora.alpha else config.lora.alpha_ratio * values["lora_r"]


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("lora_r", int, "lora.r", positive_int(1024), "[4, 8, 16]", peft=("r",), doc="LoRA rank"),
    Hyperparameter(
        "lora_alpha",
        float,
        "lora.alpha",
        number_in(0, 1e6, low_open=True),
        "[16, 32, 64]",
        log=True,
        peft=("lora_alpha",),
        derive=_alpha,
        doc="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)",
        legacy=0.0,
    ),
    Hyperparameter(
        "lora_dropout",
        float,
        "lora.dropout",
        number_in(0, 1, high_open=True),
        "[0.0, 0.05, 0.1]",
        peft=("lora_dropout",),
        doc="dropout on the LoRA path",
    ),
    Hyperparameter(
        "target_modules",
        tuple,
        "lora.target_modules",
        check_modules,
        '["q_proj,k_proj,v_proj,o_proj", "all-linear"]',
        ranges=False,
        peft=("target_modules",),
        to_kwarg=_modules_kwarg,
        encode=modules_to_param,
        decode=lambda v: tuple(modules_from_param(v)),
        doc="modules that get adapters",
    ),
    Hyperparameter(
        "use_dora",
        bool,
        "lora.use_dora",
        is_bool,
        "[false, true]",
        ranges=False,
        peft=("use_dora",),
        doc="DoRA: weight-decomposed LoRA",
        legacy=False,
    ),
    Hyperparameter(
        "use_rslora",
        bool,
        "lora.use_rslora",
        is_bool,
        "[false, true]",
        ranges=False,
        peft=("use_rslora",),
        doc="rank-stabilised LoRA (scale alpha / sqrt(r))",
        legacy=False,
    ),
    Hyperparameter(
        "learning_rate",
        float,
        "train.learning_rate",
        number_in(0, 1, low_open=True),
        "{ low = 1e-4, high = 4e-4, log = true }",
        log=True,
        trainer=("learning_rate",),
        doc="peak learning rate",
    ),
    Hyperparameter(
        "epochs", int, "train.epochs", positive_int(1000), "[1, 2, 3]", trainer=("num_train_epochs",), doc="epochs"
    ),
    Hyperparameter(
        "warmup_ratio",
        float,
        "train.warmup_ratio",
        number_in(0, 1, high_open=True),
        "[0.0, 0.03, 0.1]",
        trainer=("warmup_steps",),
        doc="share of steps with linear warm-up",
    ),
    Hyperparameter(
        "weight_decay",
        float,
        "train.weight_decay",
        number_in(0, 1),
        "[0.0, 0.01]",
        trainer=("weight_decay",),
        doc="AdamW weight decay",
    ),
    Hyperparameter(
        "batch_size",
        int,
        "train.batch_size",
        positive_int(4096),
        "[4, 8]",
        trainer=("per_device_train_batch_size", "per_device_eval_batch_size"),
        doc="per-device micro-batch",
    ),
    Hyperparameter(
        "gradient_accumulation",
        int,
        "train.gradient_accumulation",
        positive_int(4096),
        "[2, 4]",
        trainer=("gradient_accumulation_steps",),
        doc="micro-batches per optimizer step",
    ),
    Hyperparameter(
        "max_grad_norm",
        float,
        "train.max_grad_norm",
        number_in(0, 1e4),
        "[0.3, 1.0]",
        trainer=("max_grad_norm",),
        doc="gradient clipping norm (0 = none)",
        legacy=1.0,
    ),
    Hyperparameter(
        "lr_scheduler",
        str,
        "train.lr_scheduler",
        one_of(SCHEDULERS),
        '["cosine", "linear"]',
        ranges=False,
        trainer=("lr_scheduler_type",),
        doc="learning-rate schedule",
    ),
    Hyperparameter(
        "optim",
        str,
        "train.optim",
        one_of(OPTIMIZERS),
        '["adamw_torch", "paged_adamw_8bit"]',
        ranges=False,
        trainer=("optim",),
        doc="optimizer",
        legacy="adamw_torch",
    ),
)
BY_NAME: dict[str, Hyperparameter] = {h.name: h for h in HYPERPARAMETERS}
SEARCH_KEYS = tuple(BY_NAME)


def config_value(config: Any, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def to_optuna_value(key: str, value: Any) -> Any:
    """A search-space value as Optuna stores it (categorical choices are scalars)."""
    return BY_NAME[key].encode(value) if key in BY_NAME else value


def point_key(point: dict[str, Any]) -> str:
    """'learning_rate=0.0002,lora_r=8': a point's name in tables, logs and notes."""
    return ",".join(f"{k}={point[k]}" for k in sorted(point))


def short_point_key(point: dict[str, Any]) -> str:
    """``point_key`` for people: floats to 4 significant digits (sampled learning rates
    carry 16). Only for display; ``point_key`` is what identifies a point."""
    return ",".join(f"{k}={point[k]:.4g}" if isinstance(point[k], float) else f"{k}={point[k]}" for k in sorted(point))


def point_dirname(point: dict[str, Any]) -> str:
    """A filesystem-safe folder name per point, readable for grid points; long names
    (many float parameters) end in a digest instead. Checkpoints are found by the
    point, not by the trial number, so a retried trial resumes where the last stopped."""
    safe = point_key(point).replace(",", "__").replace("=", "-")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in safe)
    if len(safe) <= 100:
        return safe
    digest = hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:16]
    return f"{safe[:80]}__{digest}"


def _coerce(h: Hyperparameter, value: Any) -> Any:
    if h.type is tuple:
        return tuple(modules_from_param(value))
    if h.type is float:
        return float(value)
    if h.type is int:
        return int(value)
    return value


class _TrialParamsMethods:
    """Behaviour of :class:`TrialParams` (its fields come from the table)."""

    def with_batch(self, batch_size: int, gradient_accumulation: int) -> TrialParams:
        return dataclasses.replace(self, batch_size=batch_size, gradient_accumulation=gradient_accumulation)  # type: ignore[type-var, return-value]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["target_modules"] = list(d["target_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialParams:
        """From ``to_dict`` (also a stored ``effective_params``; keys written by an older
        version that lacked a hyperparameter take the table's fallback where one exists)."""
        return cls(**{h.name: _coerce(h, d[h.name]) for h in HYPERPARAMETERS if h.name in d})  # type: ignore[call-arg, return-value]

    def lora_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``peft.LoraConfig``."""
        return {k: h.to_kwarg(getattr(self, h.name)) for h in HYPERPARAMETERS for k in h.peft}

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.TrainingArguments``."""
        return {k: h.to_kwarg(getattr(self, h.name)) for h in HYPERPARAMETERS for k in h.trainer}


if TYPE_CHECKING:

    class TrialParams(_TrialParamsMethods):
        """What a type checker sees of the table-built class below: a hyperparameter of the
        table, by its name (its type is the table's, checked when a value comes in)."""

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

else:
    TrialParams = dataclasses.make_dataclass(
        "TrialParams",
        [(h.name, h.type) for h in HYPERPARAMETERS],
        bases=(_TrialParamsMethods,),
        frozen=True,
        namespace={
            "__doc__": "Effective hyperparameters of one trial: the searched values, else the config's "
            "(fields: the HYPERPARAMETERS table, in its order).",
            "__module__": __name__,
        },
    )


def trial_params(config: Any, point: dict[str, Any]) -> TrialParams:
    """Effective hyperparameters of one point: the searched value (as Optuna stores it),
    else the table's ``derive``, else the config key's value."""
    values: dict[str, Any] = {}
    for h in HYPERPARAMETERS:
        if h.name in point:
            values[h.name] = _coerce(h, h.decode(point[h.name]))
        elif h.derive is not None:
            values[h.name] = _coerce(h, h.derive(config, values))
        else:
            values[h.name] = _coerce(h, config_value(config, h.config))
    return TrialParams(**values)
