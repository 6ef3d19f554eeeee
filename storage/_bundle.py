"""Study bundles: move a study between sessions (e.g. Kaggle output -> next input).

A bundle is a directory:

    manifest.json        format, study name, optuna version, schema revision, sha256 per file
    study.db             a consistent SQLite copy (sqlite3 backup API, safe while in use)
    checkpoints/<study>/ Trainer checkpoints, one folder per grid point
    artifacts/           the Optuna artifact store (predictions)

``import_bundle`` verifies every checksum and the database schema *before* copying
anything into the working directory, so a damaged bundle changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from optuna_search.search._errors import UserError

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sqlite_path(config: Any, *, what: str) -> Path:
    from optuna_search.storage._storages import check_storage_url, redact_url

    parsed = check_storage_url(config.storage.url)
    if parsed.get_backend_name() != "sqlite":
        raise UserError(
            f"{what} works on SQLite studies; storage '{redact_url(config.storage.url)}' is a server database "
            "that every session reaches directly (back it up with the server's own tools, e.g. pg_dump)"
        )
    return Path(parsed.database)


def _schema_revision(db: Path) -> str | None:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        con.close()


def export_bundle(config: Any, output: str | Path) -> dict[str, Any]:
    import optuna

    out = Path(output)
    db = _sqlite_path(config, what="export")
    if not db.exists():
        raise UserError(f"no study database at '{db}' to export; run the study first or pass --storage")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"bundle directory '{out}' exists and is not empty; choose a new --output")
    out.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(str(db))
    dst = sqlite3.connect(str(out / "study.db"))
    try:
        src.backup(dst)  # consistent snapshot, even while a trial writes
    finally:
        dst.close()
        src.close()
    ckpt = Path(config.train.output_dir) / config.study.name
    if ckpt.exists():
        shutil.copytree(ckpt, out / "checkpoints" / config.study.name)
    art = Path(config.storage.artifacts)
    if art.exists():
        shutil.copytree(art, out / "artifacts")
    files = {
        str(p.relative_to(out)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "study_name": config.study.name,
        "optuna_version": optuna.__version__,
        "schema_revision": _schema_revision(out / "study.db"),
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify_bundle(bundle: str | Path) -> dict[str, Any]:
    """Read the manifest and check every file's checksum; raise UserError on damage."""
    root = Path(bundle)
    mf = root / MANIFEST
    if not mf.exists():
        raise UserError(f"'{root}' is not a study bundle (no {MANIFEST}); pass a directory written by `optuna-search export`")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"bundle manifest '{mf}' is not valid JSON ({e.msg}); export the bundle again") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"bundle '{root}' has format {manifest.get('format')!r}; this version reads format {BUNDLE_FORMAT}")
    bad = []
    for rel, meta in manifest.get("files", {}).items():
        p = root / rel
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
            bad.append(f"{rel}: checksum mismatch")
    if bad:
        raise UserError(
            f"bundle '{root}' is damaged ({len(bad)} of {len(manifest['files'])} files); re-export it from the session that wrote it:",
            bad[:10] + ([f"... and {len(bad) - 10} more"] if len(bad) > 10 else []),
        )
    return manifest


def import_bundle(bundle: str | Path, config: Any) -> None:
    """Copy a verified bundle into the configured (writable) locations."""
    from optuna_search.storage._storages import make_storage

    root = Path(bundle)
    manifest = verify_bundle(root)
    if manifest["study_name"] != config.study.name:
        raise UserError(
            f"bundle '{root}' holds study {manifest['study_name']!r}, the config names {config.study.name!r}; "
            f"pass --study-name {manifest['study_name']}"
        )
    db = _sqlite_path(config, what="--resume-from")
    bundled_db = root / "study.db"
    if db.exists():
        if _sha256(db) != _sha256(bundled_db):
            raise UserError(
                f"'{db}' already exists and differs from the bundle's database; move it away, or point "
                "--storage at a new file, before importing"
            )
    else:
        # Check the schema on a scratch copy first: optuna refuses an old schema with a
        # RuntimeError that make_storage turns into the `optuna storage upgrade` advice.
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=db.parent) as tmp:
            scratch = Path(tmp) / "check.db"
            shutil.copyfile(bundled_db, scratch)
            make_storage(f"sqlite:///{scratch}")
            shutil.copyfile(bundled_db, db)
    if (root / "checkpoints" / config.study.name).exists():
        shutil.copytree(root / "checkpoints" / config.study.name, Path(config.train.output_dir) / config.study.name, dirs_exist_ok=True)
    if (root / "artifacts").exists():
        shutil.copytree(root / "artifacts", Path(config.storage.artifacts), dirs_exist_ok=True)
