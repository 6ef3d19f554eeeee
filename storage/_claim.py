"""A study-wide lock around "choose a grid point and create its trial".

Optuna's GridSampler lets parallel workers pick the same point now and then (its docs
say so), and a point evaluated twice is GPU hours thrown away. Workers therefore hold
this lock from reading the study's state until the new trial carries its ``grid_id``;
from then on every other worker sees the point as RUNNING. The lock is held for tens of
milliseconds, never during training.

- SQLite (workers on one machine): an ``fcntl`` lock on ``<db>.claim.lock``;
- PostgreSQL (workers on many machines): a session-level ``pg_advisory_lock``;
- MySQL: ``GET_LOCK``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any


def _key(study_name: str) -> int:
    # Advisory locks take a signed 64-bit key.
    return int.from_bytes(hashlib.sha256(f"optuna-search:{study_name}".encode()).digest()[:8], "big", signed=True)


class ClaimLock:
    def __init__(self, storage: Any, study_name: str) -> None:
        self._storage = storage
        self._name = study_name
        self._engine = storage.engine
        self._dialect = self._engine.dialect.name
        self._held = threading.Lock()  # re-entrancy guard inside one process
        self._conn = None
        self._fh = None

    def acquire(self) -> None:
        self._held.acquire()
        if self._dialect == "sqlite":
            import fcntl

            db = Path(self._engine.url.database)
            self._fh = open(db.with_name(db.name + ".claim.lock"), "a+")
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        elif self._dialect == "postgresql":
            from sqlalchemy import text

            self._conn = self._engine.connect()
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(self._name)})
            self._conn.commit()
        elif self._dialect == "mysql":
            from sqlalchemy import text

            self._conn = self._engine.connect()
            self._conn.execute(text("SELECT GET_LOCK(:k, 600)"), {"k": f"optuna-search:{self._name}"[:64]})

    def release(self) -> None:
        if not self._held.locked():
            return
        try:
            if self._fh is not None:
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
                self._fh.close()
                self._fh = None
            if self._conn is not None:
                from sqlalchemy import text

                if self._dialect == "postgresql":
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(self._name)})
                    self._conn.commit()
                else:
                    self._conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": f"optuna-search:{self._name}"[:64]})
                self._conn.close()
                self._conn = None
        finally:
            self._held.release()

    @property
    def held(self) -> bool:
        return self._held.locked()


def worker_env(index: int, gpus: list[str], gpus_per_worker: int = 1) -> dict[str, str]:
    """Environment of worker ``index``: pinned to its own GPU(s) when there are GPUs."""
    env = dict(os.environ)
    if gpus:
        start = (index * gpus_per_worker) % len(gpus)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[start : start + gpus_per_worker])
    env["OPTUNA_SEARCH_WORKER"] = str(index)
    return env
