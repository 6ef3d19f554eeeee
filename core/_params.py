"""The hyperparameters of one trial, and how a point of the search space is named.

Optuna stores categorical choices as scalars, so a list of LoRA target modules travels
as ``"q_proj,v_proj"`` in trial params; :func:`modules_from_param` and
:func:`modules_to_param` are the only places that convert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Hyperparameters a study may search over (grid or sampler), in a stable order.
SEARCH_KEYS = ("lora_r", "learning_rate", "epochs", "lora_dropout", "target_modules", "warmup_ratio", "weight_decay")
INT_KEYS = ("lora_r", "epochs")


def modules_from_param(value: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return list(value)


def modules_to_param(value: str | list[str] | tuple[str, ...]) -> str:
    return value if isinstance(value, str) else ",".join(value)


def to_optuna_value(key: str, value: Any) -> Any:
    """A search-space value as Optuna stores it (categorical choices are scalars)."""
    return modules_to_param(value) if key == "target_modules" else value


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


@dataclass(frozen=True)
class TrialParams:
    """Effective hyperparameters of one trial: the searched values, else the config's."""

    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...]
    learning_rate: float
    epochs: int
    warmup_ratio: float
    weight_decay: float
    batch_size: int
    """Per-device micro-batch; smaller than the config's after an out-of-memory retry."""
    gradient_accumulation: int

    def with_batch(self, batch_size: int, gradient_accumulation: int) -> "TrialParams":
        return dataclasses.replace(self, batch_size=batch_size, gradient_accumulation=gradient_accumulation)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialParams":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["target_modules"] = tuple(modules_from_param(kw["target_modules"]))
        return cls(**kw)
