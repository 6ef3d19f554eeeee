"""Optuna RDB storages (SQLite by default, PostgreSQL) opened for what a command does.

- ``open_storage(url, mode="create")`` (``run``): may create the database and Optuna's
  tables; refuses a SQLite file that holds another application's tables; creating the
  schema is serialised, so two ``run`` on a fresh database never collide.
- ``mode="write"`` (``dashboard``, which saves notes): an existing Optuna database only.
- ``mode="read"`` (``status``, ``report``, ``export``, ``ensemble`` reads): an existing
  Optuna database opened read-only (SQLite ``mode=ro``): nothing is ever written.

URLs are checked before any file is created, so a typo never leaves an empty database
behind, and passwords are masked in every message (:func:`redact_url`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shlex
import sqlite3
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna_search.core import Config, StorageSection, StudySection, UserError, redact_remote
from optuna_search.storage.study._claim import file_lock, lock_path

SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql")
MODES = ("create", "write", "read")
# Seconds a connection waits on a locked SQLite database before failing: long enough that
# a dashboard reading or a second worker writing never fails a trial.
SQLITE_BUSY_TIMEOUT_S = 60
# Optuna's own tables: a SQLite file with other tables and none of these is not ours.
OPTUNA_TABLES = {"studies", "version_info", "alembic_version"}
_FIX = "use sqlite:///file.db (relative) or sqlite:////abs/path.db, or postgresql://user@host/db"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, notes and errors."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        head, sep, _ = url.partition("//")
        return head + sep + "***" if sep else url


def redacted_config(config: Config) -> Config:
    """The config with its storage password masked: what is stored on a study, shown by
    show-config, and handed to processes that never open the storage."""
    storage = dataclasses.replace(
        config.storage, url=redact_url(config.storage.url), remote=redact_remote(config.storage.remote)
    )
    return dataclasses.replace(config, storage=storage)


def study_flags(config: Config) -> str:
    """The flags that address this study again from the same directory, for the commands
    a summary suggests ('' when the storage and the study name are the defaults; the
    remote where it was read from one); a password, if any, stays masked."""
    flags = []
    if config.storage.remote:
        # Read from a remote: the study's database here is a cache; the remote finds it again.
        flags.append(f" --remote {shlex.quote(redact_remote(config.storage.remote))}")
    elif config.storage.url != StorageSection().url:
        flags.append(f" --storage {shlex.quote(redact_url(config.storage.url))}")
    if config.study.name != StudySection().name:
        flags.append(f" --study-name {shlex.quote(config.study.name)}")
    return "".join(flags)


def redact_text(text: str, url: str) -> str:
    """Remove the password of ``url`` from free text (driver error messages quote it)."""
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
    except Exception:
        pw = None
    return text.replace(pw, "***") if pw else text


def check_storage_url(url: str, *, must_exist: bool = False, writable: bool = True) -> Any:
    """Validate a storage URL; return the parsed sqlalchemy URL. Creates nothing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact_url(url)
    if not url.strip():
        raise UserError(f"the storage URL is empty; {_FIX}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"storage URL '{shown}' is not a database URL; {_FIX}") from None
    except ValueError:  # sqlalchemy converts the port to int while parsing
        port = url.split("@")[-1].split("/")[0].rsplit(":", 1)[-1]
        raise UserError(
            f"storage URL '{shown}': port {port!r} is not a number; e.g. postgresql://user@host:5432/db"
        ) from None
    dialect = parsed.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise UserError(f"storage URL '{shown}' uses '{dialect}', which is not supported; {_FIX}")
    if dialect == "sqlite":
        _check_sqlite_url(parsed, shown, must_exist=must_exist, writable=writable)
    elif dialect == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// means psycopg2 to SQLAlchemy; use psycopg 3, which we depend on.
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif dialect == "mysql":
        _check_mysql_driver(parsed, shown)
    return parsed


def _check_sqlite_url(parsed: Any, shown: str, *, must_exist: bool, writable: bool) -> None:
    if parsed.host:
        raise UserError(
            f"storage URL '{shown}' has a host part ('{parsed.host}'): a SQLite file needs three slashes, "
            f"e.g. sqlite:///{parsed.host}{'/' + parsed.database if parsed.database else ''} (relative) "
            "or sqlite:////abs/path.db"
        )
    db = parsed.database
    if not db or db == ":memory:":
        raise UserError(
            f"storage URL '{shown}' is an in-memory database; a study there is lost when the process ends. {_FIX}"
        )
    path = Path(db)
    if path.is_dir():
        raise UserError(
            f"storage '{shown}': '{path}' is a directory; give a database file inside it, e.g. sqlite:///{path}/study.db"
        )
    if must_exist and not path.exists():
        raise UserError(f"storage '{shown}': database file '{path}' does not exist; check --storage")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UserError(f"storage '{shown}': directory '{parent}' does not exist; create it or fix the URL")
    if not writable:
        return
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(
            f"storage '{shown}': database file '{path}' is read-only; copy it to a writable "
            "directory (e.g. `optuna-search run --resume-from` on Kaggle) or fix its permissions"
        )
    if not path.exists() and not os.access(parent, os.W_OK):
        raise UserError(f"storage '{shown}': directory '{parent}' is not writable; choose a writable location")


def _check_mysql_driver(parsed: Any, shown: str) -> None:
    driver = parsed.get_driver_name()
    module = {"mysqldb": "MySQLdb", "pymysql": "pymysql", "mysqlconnector": "mysql.connector"}.get(driver, driver)
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise UserError(
            f"storage URL '{shown}' needs the MySQL driver '{module}', which is not installed; "
            "run `pip install pymysql` and use mysql+pymysql://user@host/db"
        )


def sqlite_tables(path: Path, shown: str) -> set[str] | None:
    """Table names of an existing SQLite file (None if it does not exist or is empty).
    A damaged file is a UserError that says how to recover."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        return _tables_checked(read_only_uri(path))
    except sqlite3.DatabaseError:
        pass
    # An immutable read ignores locks: a file that another process was creating (still in
    # rollback-journal mode) can look damaged mid-write. Only a locking read says so.
    try:
        return _tables_checked(read_only_uri(path, locking=True))
    except sqlite3.DatabaseError as e:
        raise UserError(damaged_database_message(shown, path, str(e))) from None


def _tables_checked(uri: str) -> set[str]:
    con = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and con.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("database disk image is malformed")
        return tables
    finally:
        con.close()


def damaged_database_message(shown: str, path: Path | str, detail: str) -> str:
    return (
        f"storage '{shown}': the database file '{path}' is damaged ({detail}); restore the study.db of "
        "the last bundle (`optuna-search run --resume-from BUNDLE` into a new directory), or salvage it "
        f"with `sqlite3 {path} .recover | sqlite3 recovered.db` and point --storage at recovered.db"
    )


def open_storage(
    url: str, *, mode: str = "create", heartbeat_interval: int | None = None, grace_period: int | None = None
):
    """An ``optuna.storages.RDBStorage`` for ``url`` opened for ``mode`` (see the module
    docstring); heartbeat on when an interval is given."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    parsed = check_storage_url(url, must_exist=mode != "create", writable=mode != "read")
    shown = redact_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        _check_sqlite_file(Path(parsed.database), shown, mode)
        full = _sqlite_url(parsed, read_only=mode == "read")
    else:
        full = parsed.render_as_string(hide_password=False)
        _check_server_database(full, url, mode)
    kwargs: dict[str, Any] = {
        "engine_kwargs": {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True},
        "skip_table_creation": mode != "create",
    }
    if heartbeat_interval:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        # A killed trial is queued again (WAITING, same params): the retry resumes it.
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
        )
    # The schema and the switch to WAL under one lock: the next `run` on a new file finds
    # both in place.
    with _schema_lock(parsed if sqlite and mode == "create" else None):
        storage = _create_rdb_storage(full, url, kwargs)
        if sqlite and mode != "read":
            _sqlite_pragmas(storage)
    # Its connections close when it is dropped, or when the command ends (close_storages):
    # a SQLite database in WAL mode then folds its -wal file back into the database file,
    # whole for whoever copies it next.
    _OPENED[:] = [f for f in _OPENED if f.alive]  # a long-lived process (the API) keeps only live ones
    _OPENED.append(weakref.finalize(storage, storage.engine.dispose))
    return storage


_OPENED: list[weakref.finalize] = []


def close_storages() -> None:
    """Close the connections of every storage this process opened (the CLI calls it when
    a command ends)."""
    while _OPENED:
        _OPENED.pop()()


def _check_sqlite_file(path: Path, shown: str, mode: str) -> None:
    tables = sqlite_tables(path, shown)
    if tables and not tables & OPTUNA_TABLES:
        raise UserError(
            f"storage '{shown}': '{path}' is a SQLite database of another application (tables: "
            f"{', '.join(sorted(tables)[:8])}); point --storage at a new file, e.g. sqlite:///optuna-search.db"
        )
    if mode != "create" and not tables:
        raise UserError(f"storage '{shown}': '{path}' holds no Optuna study; run a study first or check --storage")


def _sqlite_url(parsed: Any, *, read_only: bool) -> str:
    if not read_only:
        return parsed.render_as_string(hide_password=False)
    # SQLite's own read-only mode: no table creation, no WAL switch, no write at all. A
    # WAL database that no process has open (no -wal file) is read as immutable, so that
    # looking leaves no -wal/-shm files behind; with a writer at work, SQLite's shared
    # memory is what keeps the read consistent, and it is used.
    return f"sqlite:///{read_only_uri(Path(parsed.database))}&uri=true"


def read_only_uri(path: Path, *, locking: bool = False) -> str:
    """A SQLite URI that opens ``path`` read-only and, when no process has the database
    open (no -wal file beside it), as immutable: looking leaves no -wal/-shm files.
    ``locking``: never immutable (SQLite's locks honoured, whatever is beside it)."""
    path = path.resolve()
    immutable = not locking and not path.with_name(path.name + "-wal").exists()
    return f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")


@contextlib.contextmanager
def _schema_lock(parsed: Any) -> Iterator[None]:
    """Two `run` on a fresh SQLite file at the same moment would both create Optuna's
    schema (UNIQUE constraint failed: alembic_version); hold the claim lock while one does."""
    if parsed is None:
        yield
        return
    with file_lock(lock_path(parsed.database)):
        yield


def _create_rdb_storage(full: str, url: str, kwargs: dict[str, Any]):
    import optuna
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                # Heartbeat and the retry callback are marked experimental; they are what
                # makes a killed trial come back, and we test them.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(full, **kwargs)
        except IntegrityError:
            # Another process created the schema at the same moment (a server database,
            # where no file lock serialises it): its schema is complete a moment later.
            if attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))
        except RuntimeError as e:
            if "upgrade" in str(e):
                raise UserError(
                    f"storage '{redact_url(url)}' was written by another Optuna version and needs a schema "
                    f"upgrade; back it up, then run: optuna storage upgrade --storage '{redact_url(url)}'"
                ) from None
            raise
        except Exception as e:
            raise UserError(_open_error(e, url)) from None
    raise AssertionError("unreachable")  # pragma: no cover


def check_server_reachable(url: str) -> None:
    """A PostgreSQL/MySQL study's server answers with these credentials (nothing is
    written): checked before anything else is written for a run, its remote included.
    A SQLite URL is checked when it is opened."""
    parsed = check_storage_url(url)
    if parsed.get_backend_name() != "sqlite":
        _check_server_database(parsed.render_as_string(hide_password=False), url, "create")


def _check_server_database(full: str, url: str, mode: str) -> None:
    """A PostgreSQL/MySQL database is reachable and is Optuna's (or empty, for `run`):
    the server's own words when it is not (no listener, an unknown role or database, a
    wrong password), and another application's database is refused as a SQLite file of
    another application is."""
    import sqlalchemy

    shown = redact_url(url)
    engine = sqlalchemy.create_engine(full)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
    except Exception as e:
        raise UserError(_open_error(e, url)) from None
    finally:
        engine.dispose()
    if tables and not tables & OPTUNA_TABLES:
        raise UserError(
            f"storage '{shown}' is a database of another application (tables: {', '.join(sorted(tables)[:8])}); "
            "give Optuna a database of its own, e.g. `createdb optuna` and postgresql://user@host/optuna"
        )
    if mode != "create" and not tables & OPTUNA_TABLES:
        raise UserError(
            f"storage '{shown}' holds no Optuna study (an empty database); run a study there first or check --storage"
        )


def _root_cause(e: BaseException) -> BaseException:
    """The driver's own error under Optuna's and SQLAlchemy's wrappers (Optuna reports
    every database error as 'An exception is raised during the commit ...')."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "orig", None) or e.__cause__ or e.__context__
        if inner is None:
            break
        e = inner
    return e


def _open_error(error: Exception, url: str) -> str:
    e = _root_cause(error)
    msg = redact_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, url)
    if "malformed" in msg or "not a database" in msg:
        return damaged_database_message(redact_url(url), url, msg)
    return f"cannot open storage '{redact_url(url)}' ({msg}); check the URL and that the server is up"


def _sqlite_pragmas(storage) -> None:
    # WAL lets readers (optuna-dashboard, `status`) read while a trial writes, and a
    # SIGKILL mid-transaction rolls back cleanly on the next open. It is a property of
    # the file, so setting it once per open is enough.
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))


def list_study_names(storage) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def study_home(url: str) -> Path | None:
    """The folder of a SQLite study's database: where the study ran (its relative paths,
    checkpoints and artifacts, are relative to it). None for a server database."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(str(parsed.database).removeprefix("file:").split("?")[0]).expanduser().resolve().parent


def located(path: str | Path, home: Path | None) -> Path:
    """A stored relative path: as it is when it exists from here, else relative to the
    study's home (a reading command run from another folder), else as it is."""
    p = Path(path)
    if p.is_absolute() or p.exists() or home is None or not (home / p).exists():
        return p
    return home / p
