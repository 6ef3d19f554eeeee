"""The base every other folder may import: errors, configuration (schema, building, TOML,
study identity), the searchable hyperparameters, the typed trial and study records and
plain-text formatting. Imports nothing heavy and nothing from the other folders."""

from optuna_search.core._best import best_record
from optuna_search.core._build import build_config
from optuna_search.core._errors import UserError
from optuna_search.core._params import HYPERPARAMETERS, TrialParams
from optuna_search.core._record import SplitScores, StudyMeta, TrialRecord
from optuna_search.core._schema import Config

__all__ = ["best_record", "Config", "HYPERPARAMETERS", "SplitScores", "StudyMeta", "TrialParams", "TrialRecord", "UserError", "build_config"]
