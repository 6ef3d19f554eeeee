"""CLI (`optuna-search`), configuration from presets/files/flags, and study
orchestration: preflight, create/resume, the scheduler, the trial adapter, workers."""

from optuna_search.core import Config, UserError
from optuna_search.search.front import load_config

__all__ = ["Config", "UserError", "load_config"]
