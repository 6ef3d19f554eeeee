"""Study bundles of earlier versions (format 1), still read by `run --resume-from`
(``export`` now writes a remote in a folder, ``storage._remote``). Such a bundle is a
directory:

    manifest.json        format, study name, optuna version, schema revision, sha256 per file
    study.db             a consistent SQLite copy (sqlite3 backup API, safe while in use)
    checkpoints/<study>/ Trainer checkpoints, one folder per point
    artifacts/           the Optuna artifact store (predictions)

``import_bundle`` verifies the manifest, every checksum and the database schema *before*
copying anything into the working directory, so a damaged or hand-edited bundle changes
nothing; files the manifest does not list are refused, never imported unchecked.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from optuna_search.core import StudyLocation, UserError, file_sha256
from optuna_search.storage.study import check_storage_url, open_storage, read_only_uri, redact_url, study_checkpoints

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


def _sqlite_path(url: str, *, what: str) -> Path:
    parsed = check_storage_url(url, writable=False)
    if parsed.get_backend_name() != "sqlite":
        raise UserError(
            f"{what} works on SQLite studies; storage '{redact_url(url)}' is a server database "
            "that every session reaches directly (back it up with the server's own tools, e.g. pg_dump)"
        )
    return Path(parsed.database)


def _study_names(db: Path) -> list[str]:
    con = sqlite3.connect(read_only_uri(db), uri=True)
    try:
        return [r[0] for r in con.execute("SELECT study_name FROM studies")]
    except sqlite3.Error:
        return []
    finally:
        con.close()


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, checked for shape: a hand-edited one is refused with what is wrong."""
    mf = root / MANIFEST
    if not mf.exists():
        raise UserError(
            f"'{root}' is not a study bundle (no {MANIFEST}); pass a directory written by `optuna-search export`"
        )
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"bundle manifest '{mf}' is not valid JSON ({e}); export the bundle again") from None
    problems = []
    if not isinstance(manifest, dict):
        raise UserError(
            f"bundle manifest '{mf}' must be a JSON object, got {type(manifest).__name__}; export the bundle again"
        )
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"format is {manifest.get('format')!r}; this version reads format {BUNDLE_FORMAT}")
    if not isinstance(manifest.get("study_name"), str) or not manifest.get("study_name"):
        problems.append("study_name is missing")
    files = manifest.get("files")
    if not isinstance(files, dict) or "study.db" not in files:
        problems.append("files must be an object listing at least study.db")
    else:
        for rel, meta in files.items():
            if not (
                isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and isinstance(meta.get("bytes"), int)
            ):
                problems.append(f'files[{rel!r}] must be {{"sha256": str, "bytes": int}}')
            elif Path(rel).is_absolute() or ".." in Path(rel).parts:
                problems.append(f"files[{rel!r}] points outside the bundle")
    if problems:
        raise UserError(
            f"bundle manifest '{mf}' is not one `optuna-search export` writes; export the bundle again:", problems
        )
    return manifest


def verify_bundle(bundle: str | Path) -> dict[str, Any]:
    """Read the manifest and check every file's checksum; raise UserError on damage or
    on files the manifest does not list."""
    root = Path(bundle)
    manifest = read_manifest(root)
    files = manifest["files"]
    bad = []
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif p.stat().st_size != meta["bytes"] or file_sha256(p) != meta["sha256"]:
            bad.append(f"{rel}: checksum mismatch")
    extra = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and str(p.relative_to(root)) not in files
    ]
    bad += [f"{rel}: not listed in the manifest (nothing is imported unchecked)" for rel in extra]
    if not bad:
        names = _study_names(root / "study.db")
        if manifest["study_name"] not in names:
            raise UserError(
                f"bundle '{root}': its manifest names study {manifest['study_name']!r} but its database holds "
                f"{', '.join(map(repr, names)) or 'no study'}: the manifest was edited; re-export the bundle "
                "from the session that wrote it"
            )
    if bad:
        raise UserError(
            f"bundle '{root}' is damaged ({len(bad)} problems in {len(files)} listed files); re-export it from "
            "the session that wrote it:",
            bad[:10] + ([f"... and {len(bad) - 10} more"] if len(bad) > 10 else []),
        )
    return manifest


def import_bundle(bundle: str | Path, loc: StudyLocation) -> None:
    """Copy a verified bundle into the configured (writable) locations (every place of
    ``loc`` given: the study's own config says them)."""
    name, url, checkpoints, artifacts = loc.study_name, loc.storage_url, loc.checkpoints_dir, loc.artifacts_dir
    if name is None or url is None or checkpoints is None or artifacts is None:
        raise ValueError(f"a bundle is imported to a whole location, not {loc}")
    root = Path(bundle)
    manifest = verify_bundle(root)
    if manifest["study_name"] != name:
        raise UserError(
            f"bundle '{root}' holds study {manifest['study_name']!r}, the config names {name!r}; "
            f"pass --study-name {manifest['study_name']}"
        )
    db = _sqlite_path(url, what="--resume-from")
    bundled_db = root / "study.db"
    if db.exists():
        if file_sha256(db) != file_sha256(bundled_db):
            raise UserError(
                f"'{db}' already exists and differs from the bundle's database; move it away, or point "
                "--storage at a new file, before importing"
            )
    else:
        # Check the schema on a scratch copy first: optuna refuses an old schema with a
        # RuntimeError that open_storage turns into the `optuna storage upgrade` advice.
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=db.parent) as tmp:
            scratch = Path(tmp) / "check.db"
            shutil.copyfile(bundled_db, scratch)
            open_storage(f"sqlite:///{scratch}", mode="write")
            shutil.copyfile(bundled_db, db)
    src_ckpt = root / "checkpoints" / name
    if src_ckpt.exists():
        shutil.copytree(src_ckpt, study_checkpoints(checkpoints, name), dirs_exist_ok=True)
    if (root / "artifacts").exists():
        shutil.copytree(root / "artifacts", Path(artifacts), dirs_exist_ok=True)
