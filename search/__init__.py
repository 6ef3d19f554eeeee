"""CLI, configuration and study orchestration of optuna-search."""

from optuna_search.search._config import Config, load_config
from optuna_search.search._errors import UserError

__all__ = ["Config", "UserError", "load_config"]
