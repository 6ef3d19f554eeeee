"""The base every other folder may import: errors, configuration (schema, building, TOML,
study identity), the searchable hyperparameters, the typed trial and study records and
plain-text formatting. Imports nothing heavy and nothing from the other folders."""

from optuna_search.core._best import best_record
from optuna_search.core._build import build_config
from optuna_search.core._errors import UserError
from optuna_search.core._files import disk_full, file_sha256, replaced_atomically, writable
from optuna_search.core._identity import (
    LOCATION_KEYS,
    adopt_legacy_defaults,
    default_location,
    diff_semantic,
    with_legacy_values,
)
from optuna_search.core._json import from_json, to_json
from optuna_search.core._location import StudyLocation, redact_remote
from optuna_search.core._metric import BY_METRIC, EXTRA, INVALID, METRICS, Metric, one_answer, reserved_field_names
from optuna_search.core._params import (
    BY_NAME,
    HYPERPARAMETERS,
    SINCE_THE_FIRST_VERSION,
    Hyperparameter,
    TrialParams,
    point_dirname,
    point_key,
    short_point_key,
    to_optuna_value,
)
from optuna_search.core._record import PAUSED_ATTR, SplitScores, Status, StudyMeta, TrialRecord
from optuna_search.core._schema import SECTIONS, Config, StorageSection, StudySection, enumerate_grid, suggest
from optuna_search.core._text import format_seconds, markdown_table, num, pct, render_table
from optuna_search.core._toml import TOMLDecodeError, loads, to_toml

__all__ = [
    "BY_METRIC",
    "BY_NAME",
    "EXTRA",
    "HYPERPARAMETERS",
    "INVALID",
    "LOCATION_KEYS",
    "METRICS",
    "PAUSED_ATTR",
    "SECTIONS",
    "SINCE_THE_FIRST_VERSION",
    "Config",
    "Hyperparameter",
    "Metric",
    "SplitScores",
    "Status",
    "StorageSection",
    "StudyLocation",
    "StudyMeta",
    "StudySection",
    "TOMLDecodeError",
    "TrialParams",
    "TrialRecord",
    "UserError",
    "adopt_legacy_defaults",
    "best_record",
    "build_config",
    "default_location",
    "diff_semantic",
    "disk_full",
    "enumerate_grid",
    "file_sha256",
    "format_seconds",
    "from_json",
    "loads",
    "markdown_table",
    "num",
    "one_answer",
    "pct",
    "point_dirname",
    "point_key",
    "redact_remote",
    "render_table",
    "replaced_atomically",
    "reserved_field_names",
    "short_point_key",
    "suggest",
    "to_json",
    "to_optuna_value",
    "to_toml",
    "with_legacy_values",
    "writable",
]
