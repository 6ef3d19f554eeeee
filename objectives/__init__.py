"""Train-and-evaluate objectives (QLoRA causal LM first), data, prompts, models,
evaluation and metrics. Imports no Optuna and nothing from search/.

Submodules import torch/transformers lazily; importing this package stays light.
"""

from optuna_search.core import Config
from optuna_search.objectives._baselines import compute_baselines
from optuna_search.objectives._cache import cache_root
from optuna_search.objectives._data import (
    CHARS_PER_TOKEN_BOUND,
    Dataset,
    Example,
    StudyData,
    load_dataset_from_config,
    load_split,
    prepare_study_data,
    resolve_eval_subset,
)
from optuna_search.objectives._ddp import DistributedObjective
from optuna_search.objectives._demo_data import ensure_demo_data
from optuna_search.objectives._ensemble import Member, check_members, correctness, hard_vote, soft_vote
from optuna_search.objectives._evaluate import evaluate, evaluate_examples
from optuna_search.objectives._footprint import T4_USABLE_BYTES, GiB, Setting, Shape, estimate
from optuna_search.objectives._footprint import render as render_footprint
from optuna_search.objectives._memory import frozen_for_a_study, prefer_expandable_segments, release_memory
from optuna_search.objectives._metrics import Evaluation, Prediction, parse_prediction, score_predictions
from optuna_search.objectives._model import (
    BUILTIN_TINY,
    base_licence,
    check_lora_targets,
    check_model_available,
    count_parameters,
    demo_note,
    load_adapters,
    load_lora_model,
    load_tokenizer,
    merged_model,
    model_source,
    native_bf16,
    pick_compute_dtype,
    resolve_model_source,
)
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._protocol import (
    BudgetExhausted,
    DivergedTraining,
    Objective,
    OutOfMemory,
    Stopped,
    TrialHooks,
    TrialRequest,
    TrialResult,
    ValidationPoint,
)
from optuna_search.objectives._qlora import QLoRAObjective
from optuna_search.objectives._quality import check_quality, quality_warnings, render_distribution
from optuna_search.objectives._quiet import quiet_libraries
from optuna_search.objectives._stats import (
    ALPHA,
    holm,
    mcnemar_exact,
    paired_worse,
    reliability_bins,
    wilson_interval,
)
from optuna_search.objectives._train import Collator, stop_step


def make_objective(config: Config) -> Objective:
    """The objective a study's trials train through: QLoRA in this process, or over
    ``train.gpus_per_trial`` ranks with DDP."""
    return DistributedObjective(config) if config.train.gpus_per_trial > 1 else QLoRAObjective(config)


__all__ = [
    "ALPHA",
    "BUILTIN_TINY",
    "CHARS_PER_TOKEN_BOUND",
    "T4_USABLE_BYTES",
    "BudgetExhausted",
    "Collator",
    "Dataset",
    "DistributedObjective",
    "DivergedTraining",
    "Evaluation",
    "Example",
    "GiB",
    "Member",
    "Objective",
    "OutOfMemory",
    "Prediction",
    "PromptEncoder",
    "QLoRAObjective",
    "Setting",
    "Shape",
    "Stopped",
    "StudyData",
    "TrialHooks",
    "TrialRequest",
    "TrialResult",
    "ValidationPoint",
    "base_licence",
    "cache_root",
    "check_lora_targets",
    "check_members",
    "check_model_available",
    "check_quality",
    "compute_baselines",
    "correctness",
    "count_parameters",
    "demo_note",
    "ensure_demo_data",
    "estimate",
    "evaluate",
    "evaluate_examples",
    "frozen_for_a_study",
    "hard_vote",
    "holm",
    "load_adapters",
    "load_dataset_from_config",
    "load_lora_model",
    "load_split",
    "load_tokenizer",
    "make_objective",
    "mcnemar_exact",
    "merged_model",
    "model_source",
    "native_bf16",
    "paired_worse",
    "parse_prediction",
    "pick_compute_dtype",
    "prefer_expandable_segments",
    "prepare_study_data",
    "quality_warnings",
    "quiet_libraries",
    "release_memory",
    "reliability_bins",
    "render_distribution",
    "render_footprint",
    "resolve_eval_subset",
    "resolve_model_source",
    "score_predictions",
    "soft_vote",
    "stop_step",
    "wilson_interval",
]
