"""Study configuration: frozen dataclasses, one per TOML section.

Every field carries its docstring; a field typed ``Literal[...]`` takes one of those
values (checked, with a suggestion, by ``_build``); the checks that need more than a type
sit in each section's ``check`` method, right below its fields (peft-style). Every
problem is collected and raised once (``build_config``), so a user fixes a config in one
round trip. Reading presets, TOML files and ``--set`` overrides (and their precedence)
is the CLI's job: ``optuna_search.search.front._config``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from optuna_search.core._metric import METRICS, reserved_field_names
from optuna_search.core._params import (
    BY_NAME,
    HYPERPARAMETERS,
    OPTIMIZERS,
    SCHEDULERS,
    SEARCH_KEYS,
    trial_params,
)

if TYPE_CHECKING:
    from optuna_search.core._params import TrialParams

SPLITS = ("test", "validation")
# Objectives besides the accuracies and F1s (maximised); these are costs (minimised).
COST_OBJECTIVES = ("eval_seconds_per_example", "peak_memory_mb", "trainable_params", "train_seconds")
# Quality objectives over all fields: each metric of the table (core._metric), aggregated
# over the fields (overall accuracy = the mean of the fields' accuracies, ...).
QUALITY_OBJECTIVES = tuple(m.overall for m in METRICS)
FIELD_METRICS = tuple(m.name for m in METRICS)
PRIMARY_OBJECTIVE = METRICS[0].overall
TRACKERS = ("tensorboard", "mlflow", "wandb")
MAX_TRIALS = 100_000
RANGE_KEYS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class StudySection:
    name: str = "qlora-study"
    """Optuna study name; one database may hold several studies."""
    sampler: Literal["grid", "tpe", "random", "gp", "nsga2", "brute_force"] = "grid"
    """grid (every point of study.grid once), tpe, random, gp (Gaussian process), nsga2
    (multi-objective) or brute_force (every point of a finite search space, in random
    order). Seeded by study.seed; on a finite space no sampler runs a point twice."""
    grid: dict[str, list[Any]] = field(default_factory=lambda: {"lora_r": [4, 8, 16]})
    """Grid for sampler = "grid": each searchable hyperparameter maps to its values."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """Space for the other samplers: per key a list (categorical) or a range table
    {low, high} with optional log = true or step (int or float by the bounds)."""
    n_trials: int = 0
    """Finished trials (COMPLETE or PRUNED) that end a sampler study, or the number of
    configurations successive halving samples; 0 for grids (the grid's size). On a
    finite space it is clipped to the space's size. `run --n-trials N` extends a search."""
    objectives: list[str] = field(default_factory=lambda: [PRIMARY_OBJECTIVE])
    """The first is what the study optimises: overall_accuracy, macro_f1,
    balanced_accuracy or <field>_accuracy / <field>_macro_f1 / <field>_balanced_accuracy;
    more make it multi-objective, adding costs (minimised): eval_seconds_per_example,
    peak_memory_mb, trainable_params, train_seconds."""
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    """Stop unpromising trials early on study.prune_on: none, median, successive_halving
    or hyperband (Optuna's pruners)."""
    pruner_startup_trials: int = 2
    """median: trials that finish before any is pruned."""
    pruner_warmup_steps: int = 1
    """median: validation points a trial reports before it can be pruned."""
    pruner_min_resource: int = 1
    """successive_halving / hyperband: validation points every trial gets."""
    pruner_reduction_factor: int = 3
    """successive_halving / hyperband: 1/factor of the trials go on at each rung."""
    prune_on: Literal["accuracy", "label_logprob"] = "accuracy"
    """The signal at each validation point (the trials' intermediate values, what pruners
    and successive halving compare): overall validation accuracy, or the mean
    log-probability of the correct label (needs eval.method = "score"; it moves before
    accuracy does)."""
    schedule: Literal["trials", "successive_halving"] = "trials"
    """trials: each trial trains to its end (pruners may stop it); successive_halving:
    every configuration trains to the first rung and pauses at a checkpoint, the best
    1/eta resume to the next rung, the others end PRUNED."""
    rungs: list[float] = field(default_factory=lambda: [0.111, 0.333, 1.0])
    """successive_halving: fractions of training at which configurations are compared,
    increasing, ending at 1.0."""
    eta: int = 3
    """successive_halving: 1/eta of the configurations go on at each rung."""
    promote: Literal["fixed", "adaptive"] = "fixed"
    """successive_halving: fixed: the best 1/eta go on, decided once; adaptive: the best
    1/eta and the rung's last go on first, and what they do at the next rung decides
    whether the rung's order held (cut), was weak (the next 1/eta go on, judged again)
    or told nothing or misled (the rest go on); each step and its evidence
    (Spearman's rho between the rungs, paired tests on the validation examples) is in
    the log and the report."""
    cooldown: bool = False
    """successive_halving: score each rung but the last after a cool-down branch. From the
    paused checkpoint the learning rate falls to 0 (1-sqrt) over train.decay_ratio /
    (1 - train.decay_ratio) of the steps so far; the configuration is validated there and
    the branch discarded; a promoted one resumes from the checkpoint on its own schedule.
    A rung's score is then what the configuration reaches when trained to that budget,
    not its state at a high learning rate (Hägele et al. 2024). It costs a quarter of each
    rung's training at decay_ratio 0.2; benchmarks/search_efficiency.py found it not worth
    that on the demo space (docs: Searching beyond the grid), hence off."""
    startup_trials: int = 4
    """tpe / gp: random trials before the model guides the search."""
    seed: int = 42
    """Seed of the sampler (and of the pruner's brackets)."""
    warm_start: str = ""
    """Storage URL of an earlier study (study name after '#' when it holds several) whose
    finished trials seed this new one; empty = none."""

    def check(self, c: Config) -> list[str]:
        p = []
        if not self.name.strip():
            p.append("study.name is empty; give the study a name")
        if self.sampler == "grid":
            p += _check_grid(self.grid)
            if self.search_space:
                p.append("study.search_space is for the samplers other than grid; put the grid's values in study.grid")
            if self.n_trials:
                p.append(f"study.n_trials = {self.n_trials}: a grid runs each of its points once; leave n_trials at 0")
        else:
            if not self.search_space:
                p.append(
                    f"study.search_space is empty; sampler {self.sampler!r} needs ranges, e.g. "
                    "search_space.learning_rate = { low = 1e-4, high = 4e-4, log = true }"
                )
            for key, spec in self.search_space.items():
                p += _check_space_entry(key, spec)
            if not 1 <= self.n_trials <= MAX_TRIALS:
                p.append(
                    f"study.n_trials = {self.n_trials}: sampler {self.sampler!r} needs the number of trials to run, "
                    f"from 1 to {MAX_TRIALS:,} (e.g. 15)"
                )
        p += _check_objectives(self.objectives, c.data.fields)
        if self.pruner != "none" and len(self.objectives) > 1:
            p.append(
                f"study.pruner = {self.pruner!r} with {len(self.objectives)} objectives: Optuna does not prune "
                'multi-objective studies; set study.pruner = "none"'
            )
        for name in ("pruner_startup_trials", "pruner_warmup_steps", "startup_trials"):
            if not 0 <= getattr(self, name) <= MAX_TRIALS:
                p.append(f"study.{name} = {getattr(self, name)} must be from 0 to {MAX_TRIALS:,}")
        if not 1 <= self.pruner_min_resource <= 10_000 or not 2 <= self.pruner_reduction_factor <= 100:
            p.append(
                f"study.pruner_min_resource = {self.pruner_min_resource} must be from 1 to 10,000 and "
                f"pruner_reduction_factor = {self.pruner_reduction_factor} from 2 to 100"
            )
        if self.prune_on == "label_logprob" and c.eval.method != "score":
            p.append('study.prune_on = "label_logprob" needs label probabilities: set eval.method = "score"')
        if self.schedule == "successive_halving":
            p += self._check_halving()
        elif self.cooldown:
            p.append(
                "study.cooldown = true scores successive halving's rungs after a cool-down branch; this study "
                'has none: set study.schedule = "successive_halving", or leave study.cooldown out'
            )
        return p

    def _check_halving(self) -> list[str]:
        p = []
        r = self.rungs
        if (
            not r
            or any(not isinstance(x, float) or not 0 < x <= 1 for x in r)
            or any(b <= a for a, b in itertools.pairwise(r))
            or r[-1] != 1.0
        ):
            p.append(
                f"study.rungs = {r!r} must be increasing fractions of training in (0, 1] ending at 1.0, "
                "e.g. [0.111, 0.333, 1.0]"
            )
        if len(r) == 1 and r[-1] == 1.0:
            p.append(
                "study.rungs = [1.0] gives successive halving one rung: every configuration trains to its end and "
                'nothing is halved; give two or more rungs (e.g. [0.25, 1.0]), or use schedule = "trials"'
            )
        if not 2 <= self.eta <= 100:
            p.append(f"study.eta = {self.eta} must be from 2 to 100 (1/eta of the configurations go on at each rung)")
        if len(self.objectives) > 1:
            p.append(
                'study.schedule = "successive_halving" compares configurations on one objective; '
                f'study.objectives has {len(self.objectives)}: keep one, or use schedule = "trials"'
            )
        if self.pruner != "none":
            p.append(
                'study.schedule = "successive_halving" decides itself which configurations stop; '
                'set study.pruner = "none"'
            )
        if self.sampler == "nsga2":
            p.append('study.sampler = "nsga2" is multi-objective; successive halving takes one objective')
        return p


HUB_COMMITS_PER_HOUR = 128
"""huggingface.co's limit on a repo's commits in any hour."""


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
    """Seconds without heartbeat after which a RUNNING trial is considered dead (and a
    remote's lease is taken over)."""
    remote: str = ""
    """The study's remote copy: a folder, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
    hf://buckets/USER/NAME (a Hugging Face Storage Bucket: made for checkpoints) or
    hf://datasets/USER/REPO (every write a git commit): pushed as the study runs, pulled by
    a session that lacks it. Empty: none."""
    remote_commits_per_hour: int = 40
    """On a dataset repo (hf://datasets/...), the most commits the study makes in an hour,
    all its workers together (the Hub refuses a repo's commits past 128 an hour): what waits
    is coalesced into the next commit, and the lease is renewed every 3600/this seconds.
    Keep it under 128 on huggingface.co (a self-hosted Hub may allow more)."""
    remote_timeout: int = 900
    """Seconds `run` waits at its end for the last uploads (and keeps free of training
    under --time-budget) before it exits 5, naming what the remote lacks."""

    def check(self, c: Config) -> list[str]:
        p = []
        if not 1 <= self.heartbeat_interval < self.grace_period <= 86_400:
            p.append(
                f"storage.heartbeat_interval = {self.heartbeat_interval} and grace_period = {self.grace_period}: "
                "need 1 <= interval < grace_period <= 86400 seconds"
            )
        if not 10 <= self.remote_timeout <= 86_400:
            p.append(f"storage.remote_timeout = {self.remote_timeout} must be 10..86400 seconds")
        if not 1 <= self.remote_commits_per_hour <= 3600:
            p.append(
                f"storage.remote_commits_per_hour = {self.remote_commits_per_hour} must be 1..3600 (and under 128 on "
                "huggingface.co, which refuses a repo's commits past 128 an hour)"
            )
        elif (
            self.remote.startswith("hf://datasets/")
            and self.remote_commits_per_hour > HUB_COMMITS_PER_HOUR
            and "huggingface.co" in os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        ):
            p.append(
                f"storage.remote_commits_per_hour = {self.remote_commits_per_hour} is more than huggingface.co takes: "
                f"it refuses a dataset repo's commits past {HUB_COMMITS_PER_HOUR} an hour; set at most "
                f"{HUB_COMMITS_PER_HOUR} (the default, 40, leaves room for other writers), or use a Storage Bucket "
                "(hf://buckets/...: no commits)"
            )
        elif self.remote.startswith("hf://datasets/") and self.grace_period < 2 * 3600 / self.remote_commits_per_hour:
            p.append(
                f"storage.grace_period = {self.grace_period} is shorter than two lease renewals on a dataset repo "
                f"(every {3600 / self.remote_commits_per_hour:.0f} s at remote_commits_per_hour = "
                f"{self.remote_commits_per_hour}): raise grace_period to at least "
                f"{2 * 3600 / self.remote_commits_per_hour:.0f} or the commit budget"
            )
        return p


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
    quantization: Literal["nf4", "fp4", "none"] = "nf4"
    """Weight quantization of the frozen base model: nf4, fp4 (bitsandbytes 4-bit) or none."""
    double_quant: bool = True
    """Quantize the 4-bit quantization constants too (QLoRA's double quantization)."""
    compute_dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Matmul dtype: auto = bfloat16 where the GPU supports it, float16 on GPUs without
    bf16 (T4), float32 on CPU."""
    max_length: int = 512
    """Maximum tokens per example; the input text is truncated, never the answer."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off unless you trust its author."""

    def check(self, c: Config) -> list[str]:
        p = []
        if not self.name_or_path.strip():
            p.append("model.name_or_path is empty; give a hub id, a local model directory or a .gguf file")
        if not 32 <= self.max_length <= 131_072:
            p.append(f"model.max_length = {self.max_length} must be from 32 to 131,072 tokens (the study uses 512)")
        if not self.chat_template.strip():
            p.append("model.chat_template is empty; use auto, plain or the path of a Jinja template")
        return p


@dataclass(frozen=True)
class LoraSection:
    r: int = 8
    """LoRA rank when lora_r is not searched."""
    alpha: float = 0.0
    """lora_alpha when it is not searched; 0 = alpha_ratio * r (alpha follows the rank)."""
    alpha_ratio: float = 4.0
    """lora_alpha = alpha_ratio * r, unless lora.alpha is set or lora_alpha is searched."""
    dropout: float = 0.1
    """LoRA dropout when lora_dropout is not searched."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get LoRA adapters, or ["all-linear"] (every linear layer but the
    output head, as peft resolves it)."""
    use_dora: bool = False
    """DoRA (weight-decomposed low-rank adaptation, peft's use_dora)."""
    use_rslora: bool = False
    """rsLoRA: scale the adapter by alpha / sqrt(r) instead of alpha / r."""

    def check(self, c: Config) -> list[str]:
        p = _check_fixed_of(self, "lora", skip={"lora.alpha"} if self.alpha == 0 else set())
        if not 0 < self.alpha_ratio <= 1000:
            p.append(
                f"lora.alpha_ratio = {self.alpha_ratio} must be in (0, 1000] (alpha = ratio * r; the study uses 4.0)"
            )
        return p


@dataclass(frozen=True)
class TrainSection:
    learning_rate: float = 2e-4
    """Peak learning rate."""
    batch_size: int = 4
    """Per-device micro-batch size."""
    gradient_accumulation: int = 4
    """Micro-batches per optimizer step (effective batch = batch_size * this * GPUs)."""
    epochs: int = 3
    """Training epochs."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule (transformers' names): linear, cosine, constant,
    constant_with_warmup, cosine_with_restarts, warmup_stable_decay (warm-up, a constant
    rate, then a 1-sqrt decay over the last ``decay_ratio`` of training; under successive
    halving with study.cooldown = true, each rung is scored after a cool-down branch)."""
    warmup_ratio: float = 0.1
    """Fraction of steps with linear warm-up."""
    decay_ratio: float = 0.2
    """Share of a run's budget in its final decay: warmup_stable_decay's decay (Hägele et
    al. 2024 found 20% as good as a cosine schedule), and a successive-halving rung's
    cool-down branch (study.cooldown): decay_ratio / (1 - decay_ratio) of the steps so
    far, a quarter at 0.2."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (transformers' default 1.0; the QLoRA paper used 0.3; 0 = none)."""
    optim: str = "adamw_torch"
    """Optimizer (transformers' names): adamw_torch, adamw_torch_fused, adafactor, sgd,
    and bitsandbytes' adamw_8bit, paged_adamw_8bit (the QLoRA paper's; unpaged on a CPU),
    paged_adamw_32bit."""
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
    report_to: list[str] = field(default_factory=list)
    """Trackers that get every trial's training curves, params and final metrics, one run
    per trial: tensorboard (event files under each point's checkpoint folder), mlflow,
    wandb. optuna-dashboard stays the study view."""

    def check(self, c: Config) -> list[str]:
        p = []
        p += _check_fixed_of(self, "train")
        if not 0 < self.decay_ratio < 1:
            p.append(
                f"train.decay_ratio = {self.decay_ratio} must be in (0, 1) (the share of training in the decay; 0.2)"
            )
        elif (
            self.lr_scheduler == "warmup_stable_decay"
            and isinstance(self.warmup_ratio, (int, float))
            and self.warmup_ratio + self.decay_ratio > 1
        ):
            p.append(
                f"train.warmup_ratio = {self.warmup_ratio} and train.decay_ratio = {self.decay_ratio} add up to more "
                "than all of training on warmup_stable_decay (the rate would jump down where the warm-up ends); "
                "keep warmup_ratio + decay_ratio <= 1"
            )
        for name in ("checkpoint_steps", "validations_per_epoch", "gpus_per_trial"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                p.append(f"train.{name} = {getattr(self, name)} must be a positive integer")
        if self.gpus_per_trial > 1 and self.gradient_accumulation % self.gpus_per_trial:
            p.append(
                f"train.gradient_accumulation = {self.gradient_accumulation} is not divisible by "
                "train.gpus_per_trial = "
                f"{self.gpus_per_trial}; the effective batch must stay batch_size * gradient_accumulation"
            )
        for t in self.report_to:
            if t not in TRACKERS:
                p.append(f"train.report_to: {t!r} is not one of {', '.join(TRACKERS)}")
        if len(set(self.report_to)) != len(self.report_to):
            p.append(f"train.report_to = {self.report_to!r} repeats a tracker")
        return p


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
    format: Literal["auto", "instruction", "columns"] = "auto"
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
    id_column: str = "id"
    """Column naming each example (optional: file:line otherwise); predictions and the
    fixed evaluation subsets name examples by it."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Declared label set per field (a list of labels); empty = the labels seen in the
    training file."""
    label_map: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per field, old label -> new label, applied when loading every split."""

    def check(self, c: Config) -> list[str]:
        p = []
        for split in ("train", "validation", "test"):
            if not getattr(self, split).strip():
                p.append(f"data.{split} is not set; give the path of the {split} file (.jsonl or .csv)")
        if self.train_samples < 0:
            p.append(f"data.train_samples = {self.train_samples} must be >= 0 (0 = the whole training file)")
        if not self.fields:
            p.append('data.fields is empty; list the label fields, e.g. ["severity", "component", "reproducibility"]')
        if len({f.lower() for f in self.fields}) != len(self.fields):
            p.append(f"data.fields = {self.fields!r} repeats a field")
        for f in reserved_field_names(self.fields):
            p.append(
                f"data.fields names {f!r}, which collides with a name the study keeps over all fields "
                "(overall, or a metric such as balanced_accuracy): rename the field in data.fields and in the "
                "data's answers (e.g. data.label_map cannot rename a field; rename it in the files)"
            )
        for key in list(self.labels) + list(self.label_map):
            if key not in self.fields:
                p.append(f"data.labels/label_map names field {key!r}, which is not in data.fields {self.fields!r}")
        for key, labels in self.labels.items():
            if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
                p.append(f'data.labels.{key} = {labels!r} must be a list of labels, e.g. ["low", "medium", "high"]')
            elif len({x.strip().lower() for x in labels}) != len(labels):
                p.append(f"data.labels.{key} = {labels!r} repeats a label")
        for key, mapping in self.label_map.items():
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                p.append(
                    f'data.label_map.{key} = {mapping!r} must map old labels to new ones, e.g. {{ minor = "low" }}'
                )
        return p


@dataclass(frozen=True)
class EvalSection:
    num_samples: int = 100
    """Size of the fixed evaluation subset drawn from the test file (0 = all)."""
    validation_samples: int = 100
    """Size of the fixed validation subset scored at every validation point (0 = all)."""
    seed: int = 42
    """Seed that picks the evaluation subsets; fixed on the study when it is created."""
    stratify: bool = True
    """Pick the test and validation subsets stratified by the label combination (rare
    labels are then present in 100 examples); studies created before this key keep
    their stored subsets."""
    method: Literal["generate", "score"] = "generate"
    """generate = greedy decoding, then parse the answer lines; score = the most probable
    label of each field's closed label set (gives label probabilities, never a parse failure)."""
    objective_split: Literal["test", "validation"] = "test"
    """Split whose scores are the objective: test (the study plan's protocol) or
    validation (choose on validation, report test beside it)."""
    batch_size: int = 16
    """Examples per evaluation batch."""

    def check(self, c: Config) -> list[str]:
        p = []
        for name in ("num_samples", "validation_samples"):
            if not 0 <= getattr(self, name) <= 10_000_000:
                p.append(f"eval.{name} = {getattr(self, name)} must be >= 0 (0 = the whole file)")
        if not 1 <= self.batch_size <= 100_000:
            p.append(f"eval.batch_size = {self.batch_size} must be a positive integer")
        return p


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

    def problems(self) -> list[str]:
        """Every value problem across the sections (types were checked when built)."""
        return [p for name in SECTIONS for p in getattr(self, name).check(self)]

    @property
    def is_grid(self) -> bool:
        return self.study.sampler == "grid"

    @property
    def halving(self) -> bool:
        return self.study.schedule == "successive_halving"

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
        return trial_params(self, point)


SECTIONS: dict[str, type] = {
    "study": StudySection,
    "storage": StorageSection,
    "model": ModelSection,
    "lora": LoraSection,
    "train": TrainSection,
    "data": DataSection,
    "eval": EvalSection,
}


def objective_direction(name: str) -> str:
    return "minimize" if name in COST_OBJECTIVES else "maximize"


def enumerate_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def suggest(word: str, options: list[str], prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _check_fixed_of(section: Any, name: str, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The fixed values of a section's hyperparameters (every table entry whose config key
    is in ``[name]``; ``skip``: keys whose value means "derived", e.g. lora.alpha = 0),
    each checked as the table checks a searched value."""
    problems = []
    for h in HYPERPARAMETERS:
        where = h.config
        if where.split(".")[0] != name or where in skip:
            continue
        value = getattr(section, where.split(".")[1])
        if (problem := h.check(value)) is not None:
            problems.append(f"{where} = {value!r} {problem}")
    return problems


def _check_value(key: str, v: Any, where: str) -> list[str]:
    problem = BY_NAME[key].check(v)
    return [f"{where} {problem} (e.g. {key} = {BY_NAME[key].example})"] if problem else []


def _unknown_key(kind: str, key: str) -> str:
    allowed = ", ".join(SEARCH_KEYS)
    return f"study.{kind} key {key!r} is not searchable{suggest(key, list(SEARCH_KEYS))}; allowed: {allowed}"


def _repeats(values: list[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True) for v in values}) != len(values)


def _check_grid(grid: dict[str, Any]) -> list[str]:
    if not grid:
        return ["study.grid is empty; give at least one key, e.g. lora_r = [4, 8, 16]"]
    p = []
    for key, values in grid.items():
        if key not in BY_NAME:
            p.append(_unknown_key("grid", key))
            continue
        if not isinstance(values, list) or not values:
            p.append(f"study.grid.{key} must be a non-empty list of values, got {values!r}")
            continue
        if _repeats(values):
            p.append(f"study.grid.{key} = {values!r} repeats a value; each grid point must be unique")
        p += [q for v in values for q in _check_value(key, v, f"study.grid.{key} value {v!r}")]
    return p


def _check_space_entry(key: str, spec: Any) -> list[str]:
    where = f"study.search_space.{key}"
    h = BY_NAME.get(key)
    if h is None:
        return [_unknown_key("search_space", key)]
    if isinstance(spec, list):
        if not spec:
            return [f"{where} is an empty list; give the choices, e.g. {h.example}"]
        p = [f"{where} = {spec!r} repeats a value; each choice must be unique"] if _repeats(spec) else []
        return p + [q for v in spec for q in _check_value(key, v, f"{where} value {v!r}")]
    if not isinstance(spec, dict):
        return [f"{where} = {spec!r} must be a list of choices or a range table {{ low, high }}"]
    if not h.ranges:
        return [f"{where} must be a list of choices, not a range (e.g. {h.example})"]
    p = [f"{where} has unknown key {k!r}; allowed: {', '.join(RANGE_KEYS)}" for k in spec if k not in RANGE_KEYS]
    low: Any = spec.get("low")
    high: Any = spec.get("high")
    bounds = [q for v in (low, high) for q in _check_value(key, v, f"{where} bound {v!r}")]
    if bounds:
        return p + bounds
    if low >= high:
        p.append(f"{where}: low = {low} must be below high = {high}")
    if h.type is int and not (isinstance(low, int) and isinstance(high, int)):
        p.append(f"{where}: {key} takes integers; give integer low and high")
    log: Any = spec.get("log", False)
    step: Any = spec.get("step")
    if not isinstance(log, bool):
        p.append(f"{where}.log = {log!r} must be true or false")
    elif log and not h.log and h.type is not int:
        p.append(f"{where}: a log range is for scale-like values (learning_rate, lora_r, ...), not {key}")
    if step is not None:
        bad_type = (
            not isinstance(step, (int, float))
            or isinstance(step, bool)
            or (h.type is int and not isinstance(step, int))
        )
        if bad_type or step <= 0:
            p.append(f"{where}.step = {step!r} must be a positive {'integer' if h.type is int else 'number'}")
        elif low < high and step > high - low:
            p.append(f"{where}.step = {step} is larger than the range {low}..{high}: the range would hold one value")
        elif (
            low < high
            and h.type is float
            and abs(round((high - low) / step) * step - (high - low)) > 1e-9 * max(1.0, abs(high))
        ):
            p.append(
                f"{where}.step = {step} does not divide {low}..{high}; Optuna would move high to the last step below it"
            )
    if log and step is not None:
        p.append(f"{where}: log and step cannot be combined (Optuna's rule)")
    if log is True and low <= 0:
        p.append(f"{where}: a log range needs low > 0")
    return p


def _check_objectives(objectives: list[str], fields: list[str]) -> list[str]:
    quality = list(QUALITY_OBJECTIVES) + [f"{f}_{m}" for f in fields for m in FIELD_METRICS]
    allowed = quality + list(COST_OBJECTIVES)
    p = []
    if not objectives:
        p.append(f"study.objectives is empty; give at least {PRIMARY_OBJECTIVE!r}")
    elif objectives[0] not in quality:
        p.append(
            f"study.objectives = {objectives!r} must start with a quality objective ({', '.join(QUALITY_OBJECTIVES)} "
            "or a field's); costs may follow"
        )
    for o in objectives:
        if o not in allowed:
            p.append(f"study.objectives: {o!r} is not one of {', '.join(allowed)}{suggest(o, allowed)}")
    if len(set(objectives)) != len(objectives):
        p.append(f"study.objectives = {objectives!r} repeats an objective")
    return p


__all__ = ["OPTIMIZERS", "SCHEDULERS", "SECTIONS", "Config", "enumerate_grid", "objective_direction", "suggest"]
