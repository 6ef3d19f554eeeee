"""Study bundles from the command line: `export` writes the study to a new remote in a
folder (``search.remote``: the same format and checks as every remote), `run --resume-from`
pulls it back. A bundle of an earlier version (its ``manifest.json`` beside ``study.db``)
is still read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna_search.core import Config, StudyLocation, writable
from optuna_search.search.remote import export_to, import_remote
from optuna_search.search.setup import open_for_reading
from optuna_search.storage import META, import_bundle


def location_of(config: Config) -> StudyLocation:
    return StudyLocation(
        storage_url=config.storage.url,
        study_name=config.study.name,
        checkpoints_dir=config.train.output_dir,
        artifacts_dir=config.storage.artifacts,
    )


def export_study_bundle(location: StudyLocation, output: str) -> dict[str, Any]:
    """Export the study at ``location`` (its own config says where its checkpoints and
    artifacts are, unless the command line says otherwise)."""
    opened = open_for_reading(location)
    with writable(output):
        return export_to(opened.config, output)


def import_study_bundle(bundle: str, config: Config) -> None:
    if (Path(bundle) / META).is_file():
        import_remote(bundle, config)
    else:
        import_bundle(bundle, location_of(config))  # an earlier version's bundle
