"""A study bundle as versions up to 0.3 wrote it (format 1: ``manifest.json`` beside a
``study.db`` copy, ``checkpoints/<study>/`` and ``artifacts/``), to test that such bundles
still import. (The product's `export` now writes a remote in a folder.)"""

import json
import shutil
import sqlite3
from pathlib import Path

import optuna

from optuna_search.core import file_sha256


def write_legacy_bundle(db: Path, study_name: str, checkpoints: Path, artifacts: Path, out: Path) -> dict:
    out.mkdir(parents=True)
    src, dst = sqlite3.connect(str(db)), sqlite3.connect(str(out / "study.db"))
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        revision = dst.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        dst.close()
        src.close()
    if (checkpoints / study_name).exists():
        shutil.copytree(checkpoints / study_name, out / "checkpoints" / study_name)
    if artifacts.exists():
        shutil.copytree(artifacts, out / "artifacts")
    files = {
        str(p.relative_to(out)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "format": 1,
        "study_name": study_name,
        "optuna_version": optuna.__version__,
        "schema_revision": revision,
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
