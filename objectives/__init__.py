"""Train-and-evaluate objectives (QLoRA causal LM first), data, prompts, models,
evaluation and metrics. Imports no Optuna and nothing from search/.

Submodules import torch/transformers lazily; importing this package stays light.
"""

from optuna_search.core import Config
from optuna_search.objectives._data import Dataset, Example, StudyData, load_dataset_from_config, prepare_study_data
from optuna_search.objectives._ddp import DistributedObjective
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
from optuna_search.objectives._memory import release_memory
from optuna_search.objectives._qlora import QLoRAObjective


def make_objective(config: Config) -> Objective:
    """The objective a study's trials train through: QLoRA in this process, or over
    ``train.gpus_per_trial`` ranks with DDP."""
    return DistributedObjective(config) if config.train.gpus_per_trial > 1 else QLoRAObjective(config)


__all__ = [
    "BudgetExhausted", "Dataset", "DistributedObjective", "DivergedTraining", "Example", "Objective", "OutOfMemory",
    "QLoRAObjective", "Stopped", "StudyData", "TrialHooks", "TrialRequest", "TrialResult", "ValidationPoint",
    "load_dataset_from_config", "make_objective", "prepare_study_data", "release_memory",
]
