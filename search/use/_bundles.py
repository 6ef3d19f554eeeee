"""Study bundles from the command line: `export` and `run --resume-from`."""

from __future__ import annotations

from typing import Any

from optuna_search.core import Config
from optuna_search.search.loop._open import open_for_reading
from optuna_search.storage import StudyLocation, export_bundle, import_bundle


def location_of(config: Config) -> StudyLocation:
    return StudyLocation(config.storage.url, config.study.name, config.train.output_dir, config.storage.artifacts)


def export_study_bundle(location: dict[str, str], output: str) -> dict[str, Any]:
    """Export the study at ``location`` (its own config says where its checkpoints and
    artifacts are, unless the command line says otherwise)."""
    opened = open_for_reading(location)
    return export_bundle(location_of(opened.config), output)


def import_study_bundle(bundle: str, config: Config) -> None:
    import_bundle(bundle, location_of(config))
