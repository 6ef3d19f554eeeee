"""A local study kept in step with its remote (``_remote``): what goes there, when, and
how a fresh machine takes it back.

- Push: the ledger's commits (a trial paused, finished, failed, interrupted; a rung
  decided) and every checkpoint Trainer writes mark the units that changed; a background
  thread uploads them (a training step never waits for the network: it only marks), a
  point's files before the database that refers to them. Each file is frozen for its
  upload (hard links into a staging folder, so Trainer may rotate a checkpoint away
  meanwhile), the SQLite database through SQLite's backup API under the claim lock (a
  consistent snapshot while trials write, never a trial half created). Uploads that fail
  are retried with backoff, said once per streak; training goes on.
- Pull: a study that is not here (a new session, another machine) or older here than
  the remote comes back from the remote's verified units: the database, every point's
  checkpoint and final adapter, the artifacts; then `run` continues where it was.
- One writer per SQLite remote: a lease with a heartbeat; a second `run` is refused while
  the holder's heartbeat is fresh, and takes over (saying so) once it is older than the
  grace period. A PostgreSQL study's database is shared: the remote holds the points and
  the artifacts, each point written by the machine that trains it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from optuna_search.core import UserError, replaced_atomically
from optuna_search.storage._checkpoints import FINAL_ADAPTER, RUN_SETTINGS, last_complete_checkpoint
from optuna_search.storage._claim import file_lock, lock_path
from optuna_search.storage._ledger import Commit
from optuna_search.storage._remote import STUDY_UNIT, Lease, Manifest, Remote, new_holder, point_unit
from optuna_search.storage._storages import open_storage, read_only_uri

log = logging.getLogger("optuna_search")
STAGING = ".optuna-search-staging"
STATE = "remote-state.json"
STATUS = "remote-status.json"
BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True)
class LocalStudy:
    """Where a study lives on this machine."""

    name: str
    checkpoints: Path
    """``<train.output_dir>/<study>``: a folder per point."""
    artifacts: Path
    db: Path | None
    """The SQLite database (None: a server database, shared by every machine)."""

    @property
    def home(self) -> Path:
        """Where the sync keeps its state and status (beside the database, else the checkpoints)."""
        return self.db.parent if self.db is not None else self.checkpoints

    def state_file(self, what: str) -> Path:
        stem = self.db.name if self.db is not None else self.name
        return self.home / f".{stem}.{what}"


@dataclass
class SyncStatus:
    """What `status` shows of the remote: the last time everything was there, what is not yet."""

    remote: str
    last_sync: float | None = None
    pending: list[str] = field(default_factory=list)
    last_error: str | None = None
    uploaded_bytes: int = 0

    def save(self, path: Path) -> None:
        with replaced_atomically(path) as tmp:
            tmp.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> SyncStatus | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class StudySync:
    """One local study and its remote (see the module docstring)."""

    def __init__(
        self, remote: Remote, local: LocalStudy, *, writer: str | None = None, gc_grace_s: float = 0.0
    ) -> None:
        self.remote, self.local = remote, local
        self.writer = writer or new_holder().holder
        self.gc_grace_s = gc_grace_s
        tag = hashlib.sha256(remote.shown.encode()).hexdigest()[:8]
        self.state_path = local.state_file(f"{tag}.{STATE}")
        self.status_path = local.state_file(f"{tag}.{STATUS}")
        """What this machine last saw of this remote (a study may have a remote and bundles)."""
        """Contents younger than this are not collected: 0 for a single writer (SQLite),
        an hour where several machines write (their uploads may not have a manifest yet)."""
        self.status = SyncStatus(remote.shown)

    # -- what a unit holds ----------------------------------------------------------------
    def point_files(self, point: Path, staging: Path) -> dict[str, Path]:
        """A point's newest complete checkpoint, final adapter and run settings, frozen."""
        files: dict[str, Path] = {}
        last, _ = last_complete_checkpoint(point)
        parts = [p for p in (last, point / FINAL_ADAPTER) if p is not None and p.is_dir()]
        for folder in parts:
            for f in folder.rglob("*"):
                if f.is_file():
                    files[str(f.relative_to(point))] = f
        if (point / RUN_SETTINGS).is_file():
            files[RUN_SETTINGS] = point / RUN_SETTINGS
        return _freeze(files, staging)

    def study_files(self, staging: Path) -> dict[str, Path]:
        """The database (a consistent snapshot) and the prediction artifacts."""
        files: dict[str, Path] = {}
        if self.local.db is not None and self.local.db.exists():
            snapshot = staging / "study.db"
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            # Under the claim lock: never a trial caught between its creation and its
            # params (a fresh machine would find a trial without a point).
            with file_lock(lock_path(self.local.db)):
                backup_sqlite(self.local.db, snapshot)
            files["study.db"] = snapshot
        if self.local.artifacts.is_dir():
            for f in self.local.artifacts.rglob("*"):
                if f.is_file():
                    files[f"artifacts/{f.relative_to(self.local.artifacts)}"] = f
        return _freeze(files, staging)

    def units(self) -> list[str]:
        """Every unit this study has here: its points, then the study (or, on a server
        database, this machine's artifacts)."""
        points = (
            sorted(p.name for p in self.local.checkpoints.iterdir() if p.is_dir() and not p.name.startswith("."))
            if self.local.checkpoints.is_dir()
            else []
        )
        return [point_unit(self.local.name, p) for p in points] + [self.study_unit]

    @property
    def study_unit(self) -> str:
        return STUDY_UNIT if self.local.db is not None else f"artifacts/{self.writer.split(':')[0]}"

    # -- push -------------------------------------------------------------------------------
    def push(self, unit: str) -> int:
        """Upload one unit (raises what the network raised). Returns the bytes uploaded."""
        staging = self.local.home / STAGING / f"{os.getpid()}-{unit.replace('/', '_')}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            if unit.startswith("points/"):
                files = self.point_files(self.local.checkpoints / unit.rsplit("/", 1)[-1], staging)
            else:
                files = self.study_files(staging)
            result = self.remote.push(unit, files, self.writer)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._remember(unit, result.generation)
        return result.uploaded_bytes

    def push_all(self, units: list[str] | None = None) -> int:
        total = sum(self.push(u) for u in (units or self.units()))
        self.remote.collect_garbage(self.gc_grace_s)
        return total

    # -- pull -------------------------------------------------------------------------------
    def pull(self, manifests: dict[str, Manifest], *, points: bool = True) -> int:
        """The remote's study into the local places (the database last, replacing it whole)."""
        total = 0
        prefix = f"points/{self.local.name}/"
        for unit, m in sorted(manifests.items()):
            if unit.startswith(prefix) and points:
                total += self.pull_point(m)
            elif unit.startswith("artifacts/") or unit == STUDY_UNIT:
                staging = self.local.home / STAGING / f"pull-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                total += self.remote.pull(m, staging)
                total += _install_study(staging, self.local, with_db=unit == STUDY_UNIT)
                shutil.rmtree(staging, ignore_errors=True)
                self._remember(unit, m.generation)
        return total

    def pull_point(self, m: Manifest) -> int:
        """A point's files as the remote has them; the local folder replaced whole when the
        remote's is newer (another machine trained it further), kept when it is the same."""
        name = m.unit.rsplit("/", 1)[-1]
        target = self.local.checkpoints / name
        if self.state().get("units", {}).get(m.unit) == m.generation and target.is_dir():
            return 0
        fresh = self.local.checkpoints / f".{name}.pulling"
        shutil.rmtree(fresh, ignore_errors=True)
        size = self.remote.pull(m, fresh)
        old = self.local.checkpoints / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(fresh, target)
        shutil.rmtree(old, ignore_errors=True)
        self._remember(m.unit, m.generation)
        return size

    # -- what this machine last saw of the remote ---------------------------------------------------
    def state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return state if state.get("remote") == self.remote.shown else {}

    def _remember(self, unit: str, generation: int) -> None:
        state = self.state() or {"remote": self.remote.shown, "units": {}}
        state["units"][unit] = generation
        with replaced_atomically(self.state_path) as tmp:  # the upload process writes it too
            tmp.write_text(json.dumps(state))


def backup_sqlite(db: Path, out: Path) -> None:
    """A consistent copy of a SQLite database in use (the backup API), one self-contained file."""
    src = sqlite3.connect(read_only_uri(db), uri=True, timeout=60)
    dst = sqlite3.connect(str(out))
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()


def _freeze(files: dict[str, Path], staging: Path) -> dict[str, Path]:
    """Hard links (copies across file systems) of ``files`` in ``staging``: the upload
    reads these, whatever Trainer deletes meanwhile. A file already gone is left out."""
    out = {}
    for rel, path in files.items():
        if staging in path.parents:
            out[rel] = path
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except FileNotFoundError:
            continue
        except OSError:
            try:
                shutil.copy2(path, target)
            except FileNotFoundError:
                continue
        out[rel] = target
    return out


def _install_study(staging: Path, local: LocalStudy, *, with_db: bool) -> int:
    """A pulled study unit into place: the artifacts beside the local ones, the database
    replacing the local file in one rename (the local one kept aside as *.replaced)."""
    size = 0
    art = staging / "artifacts"
    if art.is_dir():
        for f in art.rglob("*"):
            if f.is_file():
                target = local.artifacts / f.relative_to(art)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
                size += f.stat().st_size
    db = staging / "study.db"
    if with_db and db.is_file() and local.db is not None:
        # An Optuna schema this version cannot use is refused before the local file changes.
        open_storage(f"sqlite:///{db}", mode="write").engine.dispose()
        local.db.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(local.db) + suffix).unlink(missing_ok=True)
        if local.db.exists():
            os.replace(local.db, local.db.with_name(local.db.name + ".replaced"))
        shutil.copy2(db, local.db.with_name(local.db.name + ".incoming"))
        os.replace(local.db.with_name(local.db.name + ".incoming"), local.db)
        size += db.stat().st_size
    return size


class Pusher(Protocol):
    """Where a unit's push runs: ``StudySync.push`` in a process of its own
    (``_pusher.PushProcess``)."""

    def push(self, unit: str) -> int: ...

    def close(self) -> None: ...


class Uploader:
    """The background thread that pushes what changed (see the module docstring)."""

    def __init__(self, sync: StudySync, pusher: Pusher) -> None:
        self.sync = sync
        self._pusher = pusher
        self._dirty: dict[str, None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._stopping = threading.Event()
        self._failures = 0
        self._thread = threading.Thread(target=self._loop, name="optuna-search-remote", daemon=True)
        self._thread.start()

    # -- what the study says changed ----------------------------------------------------------------
    def mark(self, *units: str) -> None:
        """Queue ``units`` for upload; returns at once (a training step never waits)."""
        with self._lock:
            for unit in units:
                self._dirty[unit] = None
            self._idle.clear()
        self._wake.set()

    def on_commit(self, commit: Commit, point_dir: Callable[[dict[str, Any]], str | None]) -> None:
        """A ledger commit: the trial's point (its checkpoints and adapter) and the study
        that records it; a trial that merely started changes nothing the remote needs
        (a fresh machine fails it as stale and resumes its point)."""
        if commit.kind in ("new", "claim", "resume"):
            return
        name = point_dir(commit.params) if commit.params else None
        self.mark(*([point_unit(self.sync.local.name, name)] if name else []), self.sync.study_unit)

    @property
    def pending(self) -> list[str]:
        with self._lock:
            return list(self._dirty)

    # -- the thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            with self._lock:
                todo = list(self._dirty)
            # Points first: the database refers to their checkpoints and adapters.
            todo.sort(key=lambda u: u == self.sync.study_unit)
            for unit in todo:
                if self._stop:
                    return
                self._push(unit)
            with self._lock:
                if not self._dirty:
                    self._idle.set()

    def _push(self, unit: str) -> None:
        with self._lock:
            self._dirty.pop(unit, None)
        try:
            self.sync.status.uploaded_bytes += self._pusher.push(unit)
        except Exception as e:
            kind = getattr(e, "kind", type(e).__name__)
            with self._lock:
                self._dirty.setdefault(unit, None)
            delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
            if self._failures == 0:
                log.warning(
                    "remote %s: upload of %s failed (%s: %s); retrying every %.0f-%.0f s, training goes on",
                    self.sync.remote.shown,
                    unit,
                    kind,
                    str(e).splitlines()[0][:200] if str(e) else "",
                    BACKOFF_S[0],
                    BACKOFF_S[-1],
                )
            self._failures += 1
            self.sync.status.last_error = f"{kind}: {str(e)[:200]}"
            self._save_status()
            self._wake.clear()
            self._stopping.wait(delay)  # a backoff that the run's end cuts short
            self._wake.set()
            return
        if self._failures:
            log.info("remote %s: uploads go through again", self.sync.remote.shown)
        self._failures = 0
        self.sync.status.last_error = None
        with self._lock:
            done = not self._dirty
        if done:
            self.sync.status.last_sync = time.time()
        self._save_status()

    def _save_status(self) -> None:
        self.sync.status.pending = self.pending
        with contextlib.suppress(OSError):
            self.sync.status.save(self.sync.status_path)

    # -- the end of a run ---------------------------------------------------------------------------------
    def finish(self, timeout_s: float, progress: Callable[[str], None]) -> list[str]:
        """Everything pushed (every unit marked once more), waited for at most
        ``timeout_s`` with a progress line every few seconds; returns what is still not
        there (empty: the remote holds the whole study)."""
        for unit in self.sync.units():
            self.mark(unit)
        deadline = time.monotonic() + timeout_s
        last = 0.0
        while not self._idle.wait(timeout=1.0):
            now = time.monotonic()
            if now >= deadline:
                break
            if now - last >= 5:
                last = now
                progress(
                    f"waiting for the remote: {len(self.pending)} units to upload "
                    f"({self.sync.status.uploaded_bytes / 2**20:.1f} MiB uploaded so far; at most "
                    f"{deadline - now:.0f} s more)"
                )
        missing = self.pending
        self._stop = True
        self._stopping.set()
        self._wake.set()
        self._pusher.close()  # a push still in flight is given up (its unit's manifest stays valid)
        self._thread.join(timeout=5)
        if not missing:
            try:
                self.sync.remote.collect_garbage(self.sync.gc_grace_s)
            except Exception as e:
                log.debug("remote garbage collection failed: %s", e)
        self._save_status()
        return missing


class LeaseKeeper:
    """The single-writer lease of a SQLite remote, its heartbeat in a thread."""

    def __init__(self, remote: Remote, grace_s: float, interval_s: float) -> None:
        self.remote, self.grace_s, self.interval_s = remote, grace_s, interval_s
        self.mine: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        current = self.remote.lease()
        mine = new_holder()
        if current is not None and current.age(mine.heartbeat) < self.grace_s:
            raise UserError(
                f"remote '{self.remote.shown}' is in use by {current.host} (pid {current.pid}, last heartbeat "
                f"{current.age():.0f} s ago): one run writes a SQLite study's remote at a time; wait for it, or "
                f"if it died, run again after {self.grace_s:.0f} s without a heartbeat (it is then taken over)"
            )
        if current is not None:
            log.warning(
                "remote %s: took over the lease of %s (pid %d), silent for %.0f s (a killed session)",
                self.remote.shown,
                current.host,
                current.pid,
                current.age(mine.heartbeat),
            )
        self.remote.write_lease(mine)
        self.mine = mine
        self._thread = threading.Thread(target=self._beat, name="optuna-search-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            assert self.mine is not None
            try:
                current = self.remote.lease()
                if current is not None and current.holder != self.mine.holder:
                    log.error(
                        "remote %s: another run (%s) took the lease over; this run's uploads may be overwritten",
                        self.remote.shown,
                        current.host,
                    )
                    return  # the lease is theirs now: taking it back would make two writers for good
                self.mine.heartbeat = time.time()
                self.remote.write_lease(self.mine)
            except Exception as e:
                log.debug("lease heartbeat failed: %s", e)

    def release(self, *, reach_remote: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.mine is not None and reach_remote:
            try:
                self.remote.release(self.mine.holder)
            except Exception as e:
                log.debug("lease release failed: %s", e)
