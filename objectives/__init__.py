"""Train-and-evaluate objectives (QLoRA causal LM first), data, prompts, models,
evaluation and metrics. Imports no Optuna and nothing from search/.

Submodules import torch/transformers lazily; importing this package stays light.
"""

from optuna_search.objectives._data import Dataset, Example, StudyData, load_dataset_from_config, prepare_study_data
from optuna_search.objectives._protocol import (
    BudgetExhausted,
    Objective,
    OutOfMemory,
    Stopped,
    TrialHooks,
    TrialRequest,
    TrialResult,
)

__all__ = [
    "BudgetExhausted", "Dataset", "Example", "Objective", "OutOfMemory", "Stopped", "StudyData", "TrialHooks",
    "TrialRequest", "TrialResult", "load_dataset_from_config", "prepare_study_data",
]
