"""Study configuration: frozen dataclasses, TOML presets/files and CLI overrides.

Precedence, lowest first: dataclass defaults < ``--preset`` < ``--config`` file <
``--set section.key=value`` < explicit flags (``--storage``, ``--study-name``).
Every problem in the merged configuration is collected and raised once as a
:class:`UserError`, so a user fixes a config in one round trip.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from optuna_search.search._errors import UserError

# Grid keys a study may search over, and what each value must be.
GRID_KEYS = ("lora_r", "learning_rate", "epochs", "lora_dropout", "target_modules")
QUANTIZATIONS = ("nf4", "fp4", "none")
COMPUTE_DTYPES = ("auto", "float16", "bfloat16", "float32")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts")
DATA_FORMATS = ("auto", "instruction", "columns")


@dataclass(frozen=True)
class StudySection:
    name: str = "qlora-study"
    """Optuna study name; one database may hold several studies."""
    grid: dict[str, list[Any]] = field(default_factory=lambda: {"lora_r": [4, 8, 16]})
    """Grid to search: keys among lora_r, learning_rate, epochs, lora_dropout,
    target_modules; each maps to its list of values. Every combination is one trial."""


@dataclass(frozen=True)
class StorageSection:
    url: str = "sqlite:///optuna-search.db"
    """Optuna storage URL: sqlite:///file.db (default, in the working directory) or
    postgresql://user@host/db."""
    artifacts: str = "optuna-search-artifacts"
    """Directory of the Optuna FileSystemArtifactStore (per-example predictions)."""
    heartbeat_interval: int = 60
    """Seconds between trial heartbeats; a RUNNING trial without one is stale."""
    grace_period: int = 180
    """Seconds without heartbeat after which a RUNNING trial is considered dead."""


@dataclass(frozen=True)
class ModelSection:
    name_or_path: str = "mistralai/Mistral-7B-Instruct-v0.2"
    """Base model: a hub id or a local directory (``builtin:tiny-mistral`` = demo model)."""
    revision: str = ""
    """Hub revision (branch, tag or commit) to pin; empty = default branch."""
    quantization: str = "nf4"
    """Weight quantization of the frozen base model: nf4, fp4 (bitsandbytes 4-bit) or none."""
    double_quant: bool = True
    """Quantize the 4-bit quantization constants too (QLoRA's double quantization)."""
    compute_dtype: str = "auto"
    """Matmul dtype: auto = bfloat16 where the GPU supports it, float16 on GPUs without
    bf16 (T4), float32 on CPU."""
    max_length: int = 512
    """Maximum tokens per example; the input text is truncated, never the answer."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off unless you trust its author."""


@dataclass(frozen=True)
class LoraSection:
    r: int = 8
    """LoRA rank when lora_r is not in the grid."""
    alpha_ratio: float = 4.0
    """lora_alpha = alpha_ratio * r (alpha follows the rank)."""
    dropout: float = 0.1
    """LoRA dropout when lora_dropout is not in the grid."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names that get LoRA adapters."""


@dataclass(frozen=True)
class TrainSection:
    learning_rate: float = 2e-4
    """Peak learning rate."""
    batch_size: int = 4
    """Per-device micro-batch size."""
    gradient_accumulation: int = 4
    """Micro-batches per optimizer step (effective batch = batch_size * this)."""
    epochs: int = 3
    """Training epochs."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule (transformers' names)."""
    warmup_ratio: float = 0.1
    """Fraction of steps with linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 42
    """Seed for initialisation and data order."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward: less memory, ~30% slower."""
    output_dir: str = "optuna-search-checkpoints"
    """Where Trainer checkpoints go, one folder per grid point."""
    checkpoint_steps: int = 50
    """Optimizer steps between checkpoints."""
    gpus_per_trial: int = 1
    """GPUs one trial trains on. 1 = one trial per GPU (run --workers N runs N at once);
    >1 = DDP through torchrun, gradient_accumulation divided by it so the effective
    batch stays the same."""


@dataclass(frozen=True)
class DataSection:
    train: str = ""
    """Training file (.jsonl or .csv)."""
    validation: str = ""
    """Validation file: eval loss per epoch."""
    test: str = ""
    """Test file: the fixed evaluation subset is drawn from it."""
    fields: list[str] = field(default_factory=lambda: ["severity", "component", "reproducibility"])
    """Label fields, in answer order."""
    format: str = "auto"
    """instruction = labels in `Field: value` lines of output_column; columns = one
    column per field; auto = instruction when output_column exists."""
    instruction_column: str = "instruction"
    """Column with the instruction text (optional; default_instruction otherwise)."""
    input_column: str = "input"
    """Column with the bug report text."""
    output_column: str = "output"
    """Column with `Field: value` lines (instruction format)."""
    default_instruction: str = "Classify this bug report and provide a structured analysis."
    """Instruction used when a row has none."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Declared label set per field; empty = the labels seen in the training file."""
    label_map: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per field, old label -> new label, applied when loading every split."""


@dataclass(frozen=True)
class EvalSection:
    num_samples: int = 100
    """Size of the fixed evaluation subset drawn from the test file (0 = all)."""
    seed: int = 42
    """Seed that picks the evaluation subset; fixed on the study when it is created."""
    batch_size: int = 16
    """Examples per generation batch (greedy, deterministic)."""


@dataclass(frozen=True)
class Config:
    study: StudySection = field(default_factory=StudySection)
    storage: StorageSection = field(default_factory=StorageSection)
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid combination, in a stable order (first key varies slowest)."""
        return enumerate_grid(self.study.grid)

    def trial_params(self, point: dict[str, Any]) -> dict[str, Any]:
        """Effective hyperparameters of one grid point (grid value, else config)."""
        r = int(point.get("lora_r", self.lora.r))
        modules = point.get("target_modules", self.lora.target_modules)
        if isinstance(modules, str):
            modules = [m.strip() for m in modules.split(",") if m.strip()]
        return {
            "lora_r": r,
            "lora_alpha": self.lora.alpha_ratio * r,
            "lora_dropout": float(point.get("lora_dropout", self.lora.dropout)),
            "target_modules": list(modules),
            "learning_rate": float(point.get("learning_rate", self.train.learning_rate)),
            "epochs": int(point.get("epochs", self.train.epochs)),
        }


SECTIONS: dict[str, type] = {
    "study": StudySection,
    "storage": StorageSection,
    "model": ModelSection,
    "lora": LoraSection,
    "train": TrainSection,
    "data": DataSection,
    "eval": EvalSection,
}

# Keys whose change does not change what a trial means; everything else does, and a
# study refuses to resume under a config that changes it.
NON_SEMANTIC_KEYS = {
    "study.name",
    "study.grid",
    "storage.url",
    "storage.artifacts",
    "storage.heartbeat_interval",
    "storage.grace_period",
    "train.output_dir",
    "train.checkpoint_steps",
    "train.gradient_checkpointing",
    "eval.batch_size",
}


def enumerate_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def grid_value_for_optuna(key: str, value: Any) -> Any:
    """Optuna categorical choices must be scalars: target_modules become 'a,b,c'."""
    if key == "target_modules" and isinstance(value, (list, tuple)):
        return ",".join(value)
    return value


def list_presets() -> list[str]:
    files = resources.files("optuna_search.search.presets")
    return sorted(p.name[: -len(".toml")] for p in files.iterdir() if p.name.endswith(".toml"))


def read_preset(name: str) -> dict[str, Any]:
    presets = list_presets()
    if name not in presets:
        hint = _suggest(name, presets)
        raise UserError(f"unknown preset {name!r}{hint}; available presets: {', '.join(presets)}")
    text = resources.files("optuna_search.search.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {str(p)!r} does not exist; pass an existing TOML file to --config") from None
    except OSError as e:
        raise UserError(f"cannot read config file {str(p)!r}: {e.strerror}; check its permissions") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {str(p)!r} is not valid TOML: {e}; fix the syntax there") from None


def parse_set_option(item: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as TOML (so 4, 2e-4, true, [4, 8]
    and "text" all work) and falls back to a bare string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"--set {item!r} is not of the form section.key=value (e.g. --set train.epochs=1)")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def merge_layers(*layers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            if not isinstance(values, dict):
                merged.setdefault("__bad__", {})[section] = values
                continue
            merged.setdefault(section, {}).update(values)
    return merged


def build_config(raw: dict[str, dict[str, Any]]) -> Config:
    """Type-check and validate a merged raw mapping; raise every problem at once."""
    problems: list[str] = []
    for section, value in raw.get("__bad__", {}).items():
        problems.append(f"top-level key {section!r} must be a [section] table, got {value!r}")
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "__bad__":
            continue
        cls = SECTIONS.get(section)
        if cls is None:
            problems.append(
                f"unknown section [{section}]{_suggest(section, list(SECTIONS))}; "
                f"allowed sections: {', '.join(SECTIONS)}"
            )
            continue
        kwargs = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            f = known.get(key)
            if f is None:
                problems.append(
                    f"unknown key {section}.{key}{_suggest(key, list(known), prefix=section + '.')}; "
                    f"allowed keys in [{section}]: {', '.join(known)}"
                )
                continue
            coerced, problem = _coerce(f"{section}.{key}", value, _default_of(f))
            if problem:
                problems.append(problem)
            else:
                kwargs[key] = coerced
        sections[section] = kwargs
    built = {}
    for name, cls in SECTIONS.items():
        try:
            built[name] = cls(**sections.get(name, {}))
        except TypeError as e:  # pragma: no cover - keys were checked above
            problems.append(str(e))
    if problems:
        raise UserError("invalid configuration:", problems)
    config = Config(**built)
    problems = validate_config(config)
    if problems:
        raise UserError("invalid configuration:", problems)
    return config


def load_config(
    preset: str | None = None,
    config_file: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(read_preset(preset))
    if config_file:
        layers.append(read_toml(config_file))
    set_layer: dict[str, dict[str, Any]] = {}
    for item in sets or []:
        section, key, value = parse_set_option(item)
        set_layer.setdefault(section, {})[key] = value
    layers.append(set_layer)
    layers.append(overrides or {})
    return build_config(merge_layers(*layers))


def validate_config(c: Config) -> list[str]:
    """Value checks across the whole config; returns every problem found."""
    p: list[str] = []
    if not c.study.name.strip():
        p.append("study.name is empty; give the study a name")
    if not c.study.grid:
        p.append("study.grid is empty; give at least one key, e.g. lora_r = [4, 8, 16]")
    for key, values in c.study.grid.items():
        if key not in GRID_KEYS:
            p.append(f"study.grid key {key!r} is not searchable{_suggest(key, list(GRID_KEYS))}; allowed: {', '.join(GRID_KEYS)}")
            continue
        if not isinstance(values, list) or not values:
            p.append(f"study.grid.{key} must be a non-empty list of values, got {values!r}")
            continue
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            p.append(f"study.grid.{key} = {values!r} repeats a value; each grid point must be unique")
        for v in values:
            p.extend(_check_grid_value(key, v))
    if c.lora.r < 1:
        p.append(f"lora.r = {c.lora.r} must be a positive integer (e.g. 8)")
    if c.lora.alpha_ratio <= 0:
        p.append(f"lora.alpha_ratio = {c.lora.alpha_ratio} must be > 0 (alpha = ratio * r; the study uses 4.0)")
    if not 0 <= c.lora.dropout < 1:
        p.append(f"lora.dropout = {c.lora.dropout} must be in [0, 1)")
    if not c.lora.target_modules:
        p.append("lora.target_modules is empty; list module names such as q_proj, v_proj")
    if c.model.quantization not in QUANTIZATIONS:
        p.append(f"model.quantization = {c.model.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if c.model.compute_dtype not in COMPUTE_DTYPES:
        p.append(f"model.compute_dtype = {c.model.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if not c.model.name_or_path.strip():
        p.append("model.name_or_path is empty; give a hub id or a local model directory")
    if c.model.max_length < 32:
        p.append(f"model.max_length = {c.model.max_length} is too small; use at least 32 (the study uses 512)")
    t = c.train
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate = {t.learning_rate} must be > 0 (e.g. 2e-4)")
    if t.gpus_per_trial > 1 and t.gradient_accumulation % t.gpus_per_trial:
        p.append(
            f"train.gradient_accumulation = {t.gradient_accumulation} is not divisible by train.gpus_per_trial = "
            f"{t.gpus_per_trial}; the effective batch must stay batch_size * gradient_accumulation"
        )
    for name in ("batch_size", "gradient_accumulation", "epochs", "checkpoint_steps", "gpus_per_trial"):
        if getattr(t, name) < 1:
            p.append(f"train.{name} = {getattr(t, name)} must be a positive integer")
    if t.lr_scheduler not in SCHEDULERS:
        p.append(f"train.lr_scheduler = {t.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio = {t.warmup_ratio} must be in [0, 1)")
    d = c.data
    for split in ("train", "validation", "test"):
        if not getattr(d, split).strip():
            p.append(f"data.{split} is not set; give the path of the {split} file (.jsonl or .csv)")
    if not d.fields:
        p.append("data.fields is empty; list the label fields, e.g. [\"severity\", \"component\", \"reproducibility\"]")
    if len(set(f.lower() for f in d.fields)) != len(d.fields):
        p.append(f"data.fields = {d.fields!r} repeats a field")
    if d.format not in DATA_FORMATS:
        p.append(f"data.format = {d.format!r} is not one of {', '.join(DATA_FORMATS)}")
    for key in list(d.labels) + list(d.label_map):
        if key not in d.fields:
            p.append(f"data.labels/label_map names field {key!r}, which is not in data.fields {d.fields!r}")
    if c.eval.num_samples < 0:
        p.append(f"eval.num_samples = {c.eval.num_samples} must be >= 0 (0 = the whole test file)")
    if c.eval.batch_size < 1:
        p.append(f"eval.batch_size = {c.eval.batch_size} must be a positive integer")
    if c.storage.heartbeat_interval < 1 or c.storage.grace_period <= c.storage.heartbeat_interval:
        p.append(
            f"storage.heartbeat_interval = {c.storage.heartbeat_interval} and grace_period = "
            f"{c.storage.grace_period}: need interval >= 1 and grace_period > interval"
        )
    return p


def semantic_view(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys that define what a trial means (see NON_SEMANTIC_KEYS)."""
    flat = {}
    for section, values in config_dict.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted not in NON_SEMANTIC_KEYS:
                flat[dotted] = value
    # Which keys are searched matters (a searched lr vs a fixed one); extra values don't.
    flat["study.grid_keys"] = sorted(config_dict.get("study", {}).get("grid", {}))
    return flat


def diff_semantic(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = semantic_view(stored), semantic_view(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: study has {a.get(key)!r}, config has {b.get(key)!r}")
    return out


def to_toml(config: Config) -> str:
    """Render a config as TOML (for show-config and the study's stored copy)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        nested = []
        for key, value in values.items():
            if isinstance(value, dict):
                nested.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in nested:
            if all(not isinstance(v, dict) for v in value.values()):
                inline = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inline} }}")
            else:
                for sub, inner in value.items():
                    inline = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in inner.items())
                    lines.append(f"{key}.{_toml_key(sub)} = {{ {inline} }}")
        lines.append("")
    return "\n".join(lines)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {v!r} as TOML")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _coerce(name: str, value: Any, default: Any) -> tuple[Any, str | None]:
    """Check a raw TOML value against the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value, None
        return None, f"{name} = {value!r} must be true or false"
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, f"{name} = {value!r} must be an integer"
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, f"{name} = {value!r} must be a number"
    if isinstance(default, str):
        if isinstance(value, str):
            return value, None
        return None, f"{name} = {value!r} must be a string"
    if isinstance(default, list):
        if isinstance(value, str):  # allow "a,b,c" from --set
            value = [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, f"{name} = {value!r} must be a list of strings"
    if isinstance(default, dict):
        if isinstance(value, dict):
            return {k: v for k, v in value.items()}, None
        return None, f"{name} = {value!r} must be a table"
    return value, None  # pragma: no cover


def _check_grid_value(key: str, v: Any) -> list[str]:
    where = f"study.grid.{key} value {v!r}"
    if key in ("lora_r", "epochs"):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            return [f"{where} must be a positive integer (e.g. lora_r = [4, 8, 16])"]
    elif key == "learning_rate":
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            return [f"{where} must be a positive number (e.g. 2e-4)"]
    elif key == "lora_dropout":
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
            return [f"{where} must be in [0, 1)"]
    elif key == "target_modules":
        if isinstance(v, str):
            v = [s for s in v.split(",") if s.strip()]
        if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
            return [f"{where} must be a non-empty list of module names, e.g. [\"q_proj\", \"v_proj\"]"]
    return []


def _suggest(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
