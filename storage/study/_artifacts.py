"""Per-example predictions as Optuna artifacts (JSON lines), so that any later analysis
(report, significance tests, ensembles) needs no model and no GPU."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def artifact_store(base: str | Path, *, create: bool = True):
    """The FileSystemArtifactStore at ``base``; None when reading and it does not exist
    (reading commands create nothing)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(base)
    if not path.exists():
        if not create:
            return None
        path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def upload_records(
    store: Any, study_or_trial: optuna.Study | optuna.Trial, name: str, records: list[dict[str, Any]]
) -> str:
    """Write ``records`` as a JSON-lines artifact on a trial or study; returns its id."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        return upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=study_or_trial, mimetype="application/jsonl"
        )


class ArtifactUnreadable(Exception):
    """A stored artifact that is missing or cannot be read (its message says why)."""


def read_records(store, artifact_id: str | None) -> list[dict[str, Any]] | None:
    """The records of a JSON-lines artifact; None when there is none to read (no store, no
    artifact recorded); ``ArtifactUnreadable`` when one is recorded and cannot be read
    (the caller says what that leaves out: a missing artifact degrades a report, it does
    not stop it, and it is never silent)."""
    if store is None or not artifact_id:
        return None
    try:
        with store.open_reader(artifact_id) as fh:
            return [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line.strip()]
    except Exception as e:
        raise ArtifactUnreadable(f"artifact {artifact_id}: {type(e).__name__}: {str(e)[:200]}") from None
