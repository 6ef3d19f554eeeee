"""Study configuration: frozen dataclasses, validated as a whole.

Every problem in a configuration is collected and raised once as a :class:`UserError`,
so a user fixes a config in one round trip. Reading presets, TOML files and ``--set``
overrides (and their precedence) is the CLI's job: ``optuna_search.search._config``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from optuna_search.core._errors import UserError
from optuna_search.core._params import (
    INT_KEYS,
    SEARCH_KEYS,
    TrialParams,
    modules_from_param,
)

SAMPLERS = ("grid", "tpe", "random", "gp", "nsga2")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
QUANTIZATIONS = ("nf4", "fp4", "none")
COMPUTE_DTYPES = ("auto", "float16", "bfloat16", "float32")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts")
DATA_FORMATS = ("auto", "instruction", "columns")
EVAL_METHODS = ("generate", "score")
SPLITS = ("test", "validation")
# Objectives besides the per-field accuracies (maximised); these are costs (minimised).
COST_OBJECTIVES = ("eval_seconds_per_example", "peak_memory_mb", "trainable_params", "train_seconds")
PRIMARY_OBJECTIVE = "overall_accuracy"


@dataclass(frozen=True)
class StudySection:
    name: str = "qlora-study"
    """Optuna study name; one database may hold several studies."""
    sampler: str = "grid"
    """grid (every point of study.grid once), tpe, random, gp (Gaussian process) or
    nsga2 (multi-objective). Seeded by study.seed."""
    grid: dict[str, list[Any]] = field(default_factory=lambda: {"lora_r": [4, 8, 16]})
    """Grid for sampler = "grid": keys among lora_r, learning_rate, epochs, lora_dropout,
    target_modules, warmup_ratio, weight_decay; each maps to its list of values."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """Space for the other samplers: per key a list (categorical) or a range table
    {low, high} with optional log = true or step (int or float by the bounds)."""
    n_trials: int = 0
    """Finished trials (COMPLETE or PRUNED) that end a sampler study; 0 for grids (the
    grid's size). `run --n-trials N` extends a finished search."""
    objectives: list[str] = field(default_factory=lambda: [PRIMARY_OBJECTIVE])
    """overall_accuracy first; more make the study multi-objective: <field>_accuracy
    (maximised) or eval_seconds_per_example, peak_memory_mb, trainable_params,
    train_seconds (minimised)."""
    pruner: str = "none"
    """Stop unpromising trials early on validation accuracy: none, median,
    successive_halving or hyperband."""
    pruner_startup_trials: int = 2
    """median: trials that finish before any is pruned."""
    pruner_warmup_steps: int = 1
    """median: validation points a trial reports before it can be pruned."""
    pruner_min_resource: int = 1
    """successive_halving / hyperband: validation points every trial gets."""
    pruner_reduction_factor: int = 3
    """successive_halving / hyperband: 1/factor of the trials go on at each rung."""
    startup_trials: int = 4
    """tpe / gp: random trials before the model guides the search."""
    seed: int = 42
    """Seed of the sampler (and of the pruner's brackets)."""


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
    """Base model: a hub id, a local directory, a .gguf file, or a builtin
    (builtin:smollm2-135m-instruct = the real SmolLM2 from PyPI; builtin:tiny-mistral = demo)."""
    gguf_file: str = ""
    """GGUF file name inside name_or_path (a directory or hub id) to load and dequantise."""
    revision: str = ""
    """Hub revision (branch, tag or commit) to pin; empty = default branch."""
    chat_template: str = "auto"
    """Prompt format: auto = the tokenizer's own chat template, plain = the documented
    plain template, or the path of a Jinja template file."""
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
    """LoRA rank when lora_r is not searched."""
    alpha_ratio: float = 4.0
    """lora_alpha = alpha_ratio * r (alpha follows the rank)."""
    dropout: float = 0.1
    """LoRA dropout when lora_dropout is not searched."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
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
    """Where Trainer checkpoints go, one folder per point of the search space."""
    checkpoint_steps: int = 50
    """Optimizer steps between checkpoints."""
    validations_per_epoch: int = 1
    """Validation points per epoch (validation loss and accuracy; what pruners see)."""
    gpus_per_trial: int = 1
    """GPUs one trial trains on. 1 = one trial per GPU (run --workers N runs N at once);
    >1 = DDP through torchrun, gradient_accumulation divided by it so the effective
    batch stays the same."""


@dataclass(frozen=True)
class DataSection:
    train: str = ""
    """Training file (.jsonl or .csv)."""
    validation: str = ""
    """Validation file: validation loss and accuracy during training. When it is the
    test file, the validation examples are the rows outside the test subset."""
    test: str = ""
    """Test file: the fixed evaluation subset is drawn from it."""
    train_samples: int = 0
    """Train on this many examples of the training file, picked by train.seed (0 = all)."""
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
    validation_samples: int = 100
    """Size of the fixed validation subset scored at every validation point (0 = all)."""
    seed: int = 42
    """Seed that picks the evaluation subsets; fixed on the study when it is created."""
    method: str = "generate"
    """generate = greedy decoding, then parse the answer lines; score = the most probable
    label of each field's closed label set (gives label probabilities, never a parse failure)."""
    objective_split: str = "test"
    """Split whose accuracy is the objective: test (the study plan's protocol) or
    validation (choose on validation, report test beside it)."""
    batch_size: int = 16
    """Examples per evaluation batch."""


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

    @property
    def is_grid(self) -> bool:
        return self.study.sampler == "grid"

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid combination, in a stable order (first key varies slowest)."""
        return enumerate_grid(self.study.grid)

    def searched_keys(self) -> list[str]:
        return list(self.study.grid if self.is_grid else self.study.search_space)

    def n_target(self) -> int:
        """Finished trials that make the study done."""
        return len(self.grid_points()) if self.is_grid else self.study.n_trials

    def directions(self) -> list[str]:
        return [objective_direction(o) for o in self.study.objectives]

    def trial_params(self, point: dict[str, Any]) -> TrialParams:
        """Effective hyperparameters of one point (searched value, else config)."""
        r = int(point.get("lora_r", self.lora.r))
        return TrialParams(
            lora_r=r,
            lora_alpha=self.lora.alpha_ratio * r,
            lora_dropout=float(point.get("lora_dropout", self.lora.dropout)),
            target_modules=tuple(modules_from_param(point.get("target_modules", self.lora.target_modules))),
            learning_rate=float(point.get("learning_rate", self.train.learning_rate)),
            epochs=int(point.get("epochs", self.train.epochs)),
            warmup_ratio=float(point.get("warmup_ratio", self.train.warmup_ratio)),
            weight_decay=float(point.get("weight_decay", self.train.weight_decay)),
            batch_size=self.train.batch_size,
            gradient_accumulation=self.train.gradient_accumulation,
        )


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
    "study.n_trials",
    "storage.url",
    "storage.artifacts",
    "storage.heartbeat_interval",
    "storage.grace_period",
    "train.output_dir",
    "train.checkpoint_steps",
    "train.gradient_checkpointing",
    "eval.batch_size",
}
# Where each study lives, as opposed to what it means: what reading commands (status,
# report, dashboard, export) take from the command line; the rest comes from the study.
LOCATION_KEYS = ("storage.url", "storage.artifacts", "study.name", "train.output_dir")


def objective_direction(name: str) -> str:
    return "minimize" if name in COST_OBJECTIVES else "maximize"


def enumerate_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def build_config(raw: dict[str, dict[str, Any]]) -> Config:
    """Type-check and validate a merged raw mapping; raise every problem at once."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        cls = SECTIONS.get(section)
        if cls is None:
            problems.append(
                f"unknown section [{section}]{suggest(section, list(SECTIONS))}; allowed sections: {', '.join(SECTIONS)}"
            )
            continue
        if not isinstance(values, dict):
            problems.append(f"top-level key {section!r} must be a [section] table, got {values!r}")
            continue
        sections[section] = _section_kwargs(section, cls, values, problems)
    if problems:
        raise UserError("invalid configuration:", problems)
    config = Config(**{name: cls(**sections.get(name, {})) for name, cls in SECTIONS.items()})
    problems = validate_config(config)
    if problems:
        raise UserError("invalid configuration:", problems)
    return config


def _section_kwargs(section: str, cls: type, values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            problems.append(
                f"unknown key {section}.{key}{suggest(key, list(known), prefix=section + '.')}; "
                f"allowed keys in [{section}]: {', '.join(known)}"
            )
            continue
        coerced, problem = _coerce(f"{section}.{key}", value, _default_of(f))
        if problem:
            problems.append(problem)
        else:
            kwargs[key] = coerced
    return kwargs


def validate_config(c: Config) -> list[str]:
    """Value checks across the whole config; returns every problem found."""
    return (
        _check_study(c)
        + _check_model_and_lora(c)
        + _check_train(c.train)
        + _check_data(c.data)
        + _check_eval_and_storage(c)
    )


def _check_study(c: Config) -> list[str]:
    s, p = c.study, []
    if not s.name.strip():
        p.append("study.name is empty; give the study a name")
    if s.sampler not in SAMPLERS:
        p.append(f"study.sampler = {s.sampler!r} is not one of {', '.join(SAMPLERS)}{suggest(s.sampler, list(SAMPLERS))}")
    if s.sampler == "grid":
        p += _check_grid(s.grid)
        if s.search_space:
            p.append("study.search_space is for the samplers other than grid; put the grid's values in study.grid")
        if s.n_trials:
            p.append(f"study.n_trials = {s.n_trials}: a grid runs each of its points once; leave n_trials at 0")
    else:
        if not s.search_space:
            p.append(f"study.search_space is empty; sampler {s.sampler!r} needs ranges, e.g. search_space.learning_rate = {{ low = 1e-4, high = 4e-4, log = true }}")
        for key, spec in s.search_space.items():
            p += _check_space_entry(key, spec)
        if s.n_trials < 1:
            p.append(f"study.n_trials = {s.n_trials}: sampler {s.sampler!r} needs the number of trials to run (e.g. 15)")
    p += _check_objectives(s.objectives, c.data.fields)
    if s.pruner not in PRUNERS:
        p.append(f"study.pruner = {s.pruner!r} is not one of {', '.join(PRUNERS)}{suggest(s.pruner, list(PRUNERS))}")
    elif s.pruner != "none" and len(s.objectives) > 1:
        p.append(f"study.pruner = {s.pruner!r} with {len(s.objectives)} objectives: Optuna does not prune multi-objective studies; set study.pruner = \"none\"")
    for name in ("pruner_startup_trials", "pruner_warmup_steps", "startup_trials"):
        if getattr(s, name) < 0:
            p.append(f"study.{name} = {getattr(s, name)} must be >= 0")
    if s.pruner_min_resource < 1 or s.pruner_reduction_factor < 2:
        p.append(f"study.pruner_min_resource = {s.pruner_min_resource} must be >= 1 and pruner_reduction_factor = {s.pruner_reduction_factor} >= 2")
    return p


def _check_grid(grid: dict[str, Any]) -> list[str]:
    if not grid:
        return ["study.grid is empty; give at least one key, e.g. lora_r = [4, 8, 16]"]
    p = []
    for key, values in grid.items():
        if key not in SEARCH_KEYS:
            p.append(f"study.grid key {key!r} is not searchable{suggest(key, list(SEARCH_KEYS))}; allowed: {', '.join(SEARCH_KEYS)}")
            continue
        if not isinstance(values, list) or not values:
            p.append(f"study.grid.{key} must be a non-empty list of values, got {values!r}")
            continue
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            p.append(f"study.grid.{key} = {values!r} repeats a value; each grid point must be unique")
        p += [q for v in values for q in _check_value(key, v, f"study.grid.{key} value {v!r}")]
    return p


RANGE_KEYS = ("low", "high", "log", "step")


def _check_space_entry(key: str, spec: Any) -> list[str]:
    where = f"study.search_space.{key}"
    if key not in SEARCH_KEYS:
        return [f"study.search_space key {key!r} is not searchable{suggest(key, list(SEARCH_KEYS))}; allowed: {', '.join(SEARCH_KEYS)}"]
    if isinstance(spec, list):
        if not spec:
            return [f"{where} is an empty list; give the choices, e.g. [4, 8, 16]"]
        return [q for v in spec for q in _check_value(key, v, f"{where} value {v!r}")]
    if not isinstance(spec, dict):
        return [f"{where} = {spec!r} must be a list of choices or a range table {{ low, high }}"]
    if key == "target_modules":
        return [f"{where} must be a list of choices (module lists), not a range"]
    p = [f"{where} has unknown key {k!r}; allowed: {', '.join(RANGE_KEYS)}" for k in spec if k not in RANGE_KEYS]
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        return p + [f"{where} needs numeric low and high, e.g. {{ low = 1e-4, high = 4e-4, log = true }}"]
    if low >= high:
        p.append(f"{where}: low = {low} must be below high = {high}")
    if key in INT_KEYS and not (isinstance(low, int) and isinstance(high, int)):
        p.append(f"{where}: {key} takes integers; give integer low and high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        p.append(f"{where}.log = {log!r} must be true or false")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
        p.append(f"{where}.step = {step!r} must be a positive number")
    if log and step is not None:
        p.append(f"{where}: log and step cannot be combined (Optuna's rule)")
    if log and low <= 0:
        p.append(f"{where}: a log range needs low > 0")
    return p + [q for v in (low, high) for q in _check_value(key, v, f"{where} bound {v!r}")]


def _check_objectives(objectives: list[str], fields: list[str]) -> list[str]:
    allowed = [PRIMARY_OBJECTIVE] + [f"{f}_accuracy" for f in fields] + list(COST_OBJECTIVES)
    p = []
    if not objectives or objectives[0] != PRIMARY_OBJECTIVE:
        p.append(f"study.objectives = {objectives!r} must start with {PRIMARY_OBJECTIVE!r}")
    for o in objectives:
        if o not in allowed:
            p.append(f"study.objectives: {o!r} is not one of {', '.join(allowed)}{suggest(o, allowed)}")
    if len(set(objectives)) != len(objectives):
        p.append(f"study.objectives = {objectives!r} repeats an objective")
    return p


def _check_model_and_lora(c: Config) -> list[str]:
    p = []
    if c.lora.r < 1:
        p.append(f"lora.r = {c.lora.r} must be a positive integer (e.g. 8)")
    if c.lora.alpha_ratio <= 0:
        p.append(f"lora.alpha_ratio = {c.lora.alpha_ratio} must be > 0 (alpha = ratio * r; the study uses 4.0)")
    if not 0 <= c.lora.dropout < 1:
        p.append(f"lora.dropout = {c.lora.dropout} must be in [0, 1)")
    if not c.lora.target_modules:
        p.append("lora.target_modules is empty; list module names such as q_proj, v_proj")
    m = c.model
    if m.quantization not in QUANTIZATIONS:
        p.append(f"model.quantization = {m.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if m.compute_dtype not in COMPUTE_DTYPES:
        p.append(f"model.compute_dtype = {m.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if not m.name_or_path.strip():
        p.append("model.name_or_path is empty; give a hub id, a local model directory or a .gguf file")
    if m.max_length < 32:
        p.append(f"model.max_length = {m.max_length} is too small; use at least 32 (the study uses 512)")
    if not m.chat_template.strip():
        p.append("model.chat_template is empty; use auto, plain or the path of a Jinja template")
    return p


def _check_train(t: TrainSection) -> list[str]:
    p = []
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate = {t.learning_rate} must be > 0 (e.g. 2e-4)")
    if t.gpus_per_trial > 1 and t.gradient_accumulation % t.gpus_per_trial:
        p.append(
            f"train.gradient_accumulation = {t.gradient_accumulation} is not divisible by train.gpus_per_trial = "
            f"{t.gpus_per_trial}; the effective batch must stay batch_size * gradient_accumulation"
        )
    for name in ("batch_size", "gradient_accumulation", "epochs", "checkpoint_steps", "gpus_per_trial", "validations_per_epoch"):
        if getattr(t, name) < 1:
            p.append(f"train.{name} = {getattr(t, name)} must be a positive integer")
    if t.lr_scheduler not in SCHEDULERS:
        p.append(f"train.lr_scheduler = {t.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio = {t.warmup_ratio} must be in [0, 1)")
    if t.weight_decay < 0:
        p.append(f"train.weight_decay = {t.weight_decay} must be >= 0")
    return p


def _check_data(d: DataSection) -> list[str]:
    p = []
    for split in ("train", "validation", "test"):
        if not getattr(d, split).strip():
            p.append(f"data.{split} is not set; give the path of the {split} file (.jsonl or .csv)")
    if d.train_samples < 0:
        p.append(f"data.train_samples = {d.train_samples} must be >= 0 (0 = the whole training file)")
    if not d.fields:
        p.append("data.fields is empty; list the label fields, e.g. [\"severity\", \"component\", \"reproducibility\"]")
    if len(set(f.lower() for f in d.fields)) != len(d.fields):
        p.append(f"data.fields = {d.fields!r} repeats a field")
    if d.format not in DATA_FORMATS:
        p.append(f"data.format = {d.format!r} is not one of {', '.join(DATA_FORMATS)}")
    for key in list(d.labels) + list(d.label_map):
        if key not in d.fields:
            p.append(f"data.labels/label_map names field {key!r}, which is not in data.fields {d.fields!r}")
    return p


def _check_eval_and_storage(c: Config) -> list[str]:
    e, p = c.eval, []
    for name in ("num_samples", "validation_samples"):
        if getattr(e, name) < 0:
            p.append(f"eval.{name} = {getattr(e, name)} must be >= 0 (0 = the whole file)")
    if e.batch_size < 1:
        p.append(f"eval.batch_size = {e.batch_size} must be a positive integer")
    if e.method not in EVAL_METHODS:
        p.append(f"eval.method = {e.method!r} is not one of {', '.join(EVAL_METHODS)}")
    if e.objective_split not in SPLITS:
        p.append(f"eval.objective_split = {e.objective_split!r} is not one of {', '.join(SPLITS)}")
    s = c.storage
    if s.heartbeat_interval < 1 or s.grace_period <= s.heartbeat_interval:
        p.append(
            f"storage.heartbeat_interval = {s.heartbeat_interval} and grace_period = "
            f"{s.grace_period}: need interval >= 1 and grace_period > interval"
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
    # Which keys a grid searches matters (a searched lr vs a fixed one); extra values don't.
    flat["study.grid_keys"] = sorted(config_dict.get("study", {}).get("grid", {}))
    return flat


def diff_semantic(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs in meaning between a study's stored config and ``current``. Keys the
    stored config lacks were added by a later version of this tool: not compared, so a
    study created before them still resumes."""
    a, b = semantic_view(stored), semantic_view(current)
    return [
        f"{key}: study has {a[key]!r}, config has {b.get(key)!r}"
        for key in sorted(a)
        if a[key] != b.get(key)
    ]


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
                lines.append(f"{key} = {_toml_inline(value)}")
            else:
                for sub, inner in value.items():
                    lines.append(f"{key}.{_toml_key(sub)} = {_toml_value(inner)}")
        lines.append("")
    return "\n".join(lines)


def _toml_inline(d: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d.items()) + " }"


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
    if isinstance(v, dict):
        return _toml_inline(v)
    raise TypeError(f"cannot render {v!r} as TOML")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _coerce(name: str, value: Any, default: Any) -> tuple[Any, str | None]:
    """Check a raw TOML value against the type of the field's default."""
    if isinstance(default, bool):
        return (value, None) if isinstance(value, bool) else (None, f"{name} = {value!r} must be true or false")
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, f"{name} = {value!r} must be an integer")
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, f"{name} = {value!r} must be a number")
    if isinstance(default, str):
        return (value, None) if isinstance(value, str) else (None, f"{name} = {value!r} must be a string")
    if isinstance(default, list):
        if isinstance(value, str):  # allow "a,b,c" from --set
            value = [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, f"{name} = {value!r} must be a list of strings"
    if isinstance(default, dict):
        return (dict(value), None) if isinstance(value, dict) else (None, f"{name} = {value!r} must be a table")
    return value, None  # pragma: no cover


def _check_value(key: str, v: Any, where: str) -> list[str]:
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if key in INT_KEYS:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            return [f"{where} must be a positive integer (e.g. lora_r = [4, 8, 16])"]
    elif key == "learning_rate":
        if not number or v <= 0:
            return [f"{where} must be a positive number (e.g. 2e-4)"]
    elif key in ("lora_dropout", "warmup_ratio"):
        if not number or not 0 <= v < 1:
            return [f"{where} must be in [0, 1)"]
    elif key == "weight_decay":
        if not number or v < 0:
            return [f"{where} must be a number >= 0"]
    elif key == "target_modules":
        modules = modules_from_param(v) if isinstance(v, (str, list)) else None
        if not modules or not all(isinstance(s, str) for s in modules):
            return [f"{where} must be a non-empty list of module names, e.g. [\"q_proj\", \"v_proj\"]"]
    return []


def suggest(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
