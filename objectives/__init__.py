"""Train-and-evaluate objectives (QLoRA causal LM), data loading and metrics.

Submodules import torch/transformers lazily; importing this package stays light.
"""

from optuna_search.objectives._data import Dataset, Example, load_dataset_from_config, normalise_label, parse_label_lines

__all__ = ["Dataset", "Example", "load_dataset_from_config", "normalise_label", "parse_label_lines"]
