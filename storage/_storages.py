"""Optuna RDB storages (SQLite by default, PostgreSQL) with heartbeat and safe settings.

URLs are checked *before* any database file is created, so a typo never leaves an empty
study database behind. Passwords are masked in every message (``redact_url``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from optuna_search.search._errors import UserError

SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql")
# Seconds a connection waits on a locked SQLite database before failing: long enough that
# a dashboard reading or a second worker writing never fails a trial.
SQLITE_BUSY_TIMEOUT_S = 60


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, notes and errors."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL: hide everything after '//'
        head, sep, _ = url.partition("//")
        return head + sep + "***" if sep else url


def check_storage_url(url: str, *, must_exist: bool = False) -> Any:
    """Validate a storage URL; return the parsed sqlalchemy URL. Creates nothing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact_url(url)
    fix = "use sqlite:///file.db (relative) or sqlite:////abs/path.db, or postgresql://user@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"storage URL '{shown}' is not a database URL; {fix}") from None
    dialect = parsed.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise UserError(f"storage URL '{shown}' uses '{dialect}', which is not supported; {fix}")
    if dialect == "sqlite":
        db = parsed.database
        if not db or db == ":memory:":
            raise UserError(
                f"storage URL '{shown}' is an in-memory database; a study there is lost when the "
                f"process ends. {fix}"
            )
        path = Path(db)
        if must_exist and not path.exists():
            raise UserError(f"storage '{shown}': database file '{path}' does not exist; check --storage")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.exists():
            raise UserError(f"storage '{shown}': directory '{parent}' does not exist; create it or fix the URL")
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(
                f"storage '{shown}': database file '{path}' is read-only; copy it to a writable "
                "directory (e.g. `optuna-search run --resume-from` on Kaggle) or fix its permissions"
            )
        if not path.exists() and not os.access(parent, os.W_OK):
            raise UserError(f"storage '{shown}': directory '{parent}' is not writable; choose a writable location")
    elif dialect == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// means psycopg2 to SQLAlchemy; use psycopg 3, which we depend on.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    retry_stale: bool = True,
    read_only: bool = False,
):
    """An ``optuna.storages.RDBStorage`` for ``url``, heartbeat on when an interval is given."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    parsed = check_storage_url(url, must_exist=read_only)
    full = parsed.render_as_string(hide_password=False)
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat_interval:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    try:
        with warnings.catch_warnings():
            # Heartbeat and the retry callback are marked experimental; they are what
            # makes a killed trial come back, and we test them.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if retry_stale and heartbeat_interval:
                kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback()
            storage = RDBStorage(full, **kwargs)
    except RuntimeError as e:
        if "upgrade" in str(e):
            raise UserError(
                f"storage '{redact_url(url)}' was written by another Optuna version and needs a schema "
                f"upgrade; back it up, then run: optuna storage upgrade --storage '{redact_url(url)}'"
            ) from None
        raise
    except Exception as e:  # noqa: BLE001 - connection errors of any driver
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot open storage '{redact_url(url)}' ({redact_text(msg, url)}); check the URL and that the server is up") from None
    if parsed.get_backend_name() == "sqlite":
        _sqlite_pragmas(storage)
    return storage


def _sqlite_pragmas(storage) -> None:
    # WAL lets readers (optuna-dashboard, `status`) read while a trial writes, and a
    # SIGKILL mid-transaction rolls back cleanly on the next open. It is a property of
    # the file, so setting it once per open is enough.
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))


def redact_text(text: str, url: str) -> str:
    """Remove the password of ``url`` from free text (driver error messages quote it)."""
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
    except Exception:  # noqa: BLE001
        pw = None
    return text.replace(pw, "***") if pw else text


def artifact_store(base: str | Path):
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
