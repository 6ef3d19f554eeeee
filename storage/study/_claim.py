"""A study-wide lock around "decide what runs next and create its trial".

Optuna's GridSampler lets parallel workers pick the same point now and then (its docs
say so), a sampler study could start more than ``n_trials`` trials, and a point evaluated
twice is GPU hours thrown away. Workers therefore hold this lock from reading the study's
state until the new trial exists; from then on every other worker sees it as RUNNING.
The lock is held for tens of milliseconds, never during training.

- SQLite (workers on one machine): an ``fcntl`` lock on ``<db>.claim.lock``;
- PostgreSQL (workers on many machines): a session-level ``pg_advisory_lock``;
- MySQL: ``GET_LOCK``.

    with ClaimLock(engine, study_name):
        ...  # read trials, decide, ask()
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _key(study_name: str) -> int:
    # Advisory locks take a signed 64-bit key.
    return int.from_bytes(hashlib.sha256(f"optuna-search:{study_name}".encode()).digest()[:8], "big", signed=True)


def lock_path(db: str | Path) -> Path:
    """The lock file beside a SQLite database."""
    db = Path(str(db).removeprefix("file:").split("?")[0])
    return db.with_name(db.name + ".claim.lock")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` for the block (workers on one machine)."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class ClaimLock:
    def __init__(self, engine: Any, study_name: str) -> None:
        self._name = study_name
        self._engine = engine
        self._dialect = engine.dialect.name
        self._conn: Any = None
        self._file: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> ClaimLock:
        if self._dialect == "sqlite":
            self._file = file_lock(lock_path(self._engine.url.database))
            self._file.__enter__()
        elif self._dialect in ("postgresql", "mysql"):
            from sqlalchemy import text

            self._conn = self._engine.connect()
            if self._dialect == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(self._name)})
                self._conn.commit()
            else:
                self._conn.execute(text("SELECT GET_LOCK(:k, 600)"), {"k": f"optuna-search:{self._name}"[:64]})
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.__exit__(*exc)
            self._file = None
        if self._conn is not None:
            from sqlalchemy import text

            if self._dialect == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(self._name)})
                self._conn.commit()
            else:
                self._conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": f"optuna-search:{self._name}"[:64]})
            self._conn.close()
            self._conn = None
