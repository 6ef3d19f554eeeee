"""The base every other folder may import: errors, configuration, trial parameters, the
typed trial record and plain-text formatting. Imports nothing heavy and nothing from the
other folders."""

from optuna_search.core._config import Config, build_config
from optuna_search.core._errors import UserError
from optuna_search.core._params import TrialParams
from optuna_search.core._record import SplitScores, TrialRecord

__all__ = ["Config", "SplitScores", "TrialParams", "TrialRecord", "UserError", "build_config"]
