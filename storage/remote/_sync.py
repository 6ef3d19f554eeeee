"""A local study kept in step with its remote (``_remote``): what goes there, when, and
how a fresh machine takes it back.

- Push: the ledger's commits (a trial paused, finished, failed, interrupted; a rung
  decided) and every checkpoint Trainer writes mark the units that changed; a background
  thread uploads them (a training step never waits for the network: it only marks), all
  the units waiting at that moment in one commit, a point's contents before the manifests
  that name them. Each file is frozen for its upload (hard links into a staging folder,
  so Trainer may rotate a checkpoint away meanwhile), the SQLite database through
  SQLite's backup API under the claim lock (a consistent snapshot while trials write,
  never a trial half created). A point without a complete checkpoint is not a unit.
- Budget: no request per training step; on a dataset repo (every write a git commit)
  at most ``storage.remote_commits_per_hour`` commits, what waits coalesced (the newest
  checkpoint of a point replaces an older one still waiting), the history squashed when
  it passes the live size; a 429 or 5xx is waited out by its ``Retry-After`` while the
  training goes on.
- One writer per SQLite remote: a lease taken by a conditional write and renewed inside
  the pushes (alone when nothing was pushed for a heartbeat interval); a renewal that
  finds another run's lease means this run lost it: it stops writing the remote at once
  and asks the training to stop at its next step (``on_lost``).
- Pull: a study that is not here (a new session, another machine) or older here than
  the remote comes back from the remote's verified units: the database, every point's
  checkpoint and final adapter, the artifacts; then `run` continues where it was.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from optuna_search.core import replaced_atomically
from optuna_search.storage.remote._replica import (
    STUDY_UNIT,
    Lease,
    LeaseLost,
    Manifest,
    PushResult,
    Remote,
    new_holder,
    point_unit,
)
from optuna_search.storage.remote._store import Throttled
from optuna_search.storage.study import (
    FINAL_ADAPTER,
    RUN_SETTINGS,
    Commit,
    CommitKind,
    file_lock,
    last_complete_checkpoint,
    lock_path,
    open_storage,
    read_only_uri,
)

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
    """What `status` shows of the remote: the last time everything was there, what is not
    yet, the commits of the last hour (a dataset repo's budget), a lost lease."""

    remote: str
    last_sync: float | None = None
    pending: list[str] = field(default_factory=list)
    last_error: str | None = None
    uploaded_bytes: int = 0
    commits: list[float] = field(default_factory=list)
    requests: int = 0
    lease_lost: str | None = None
    commit_budget: int | None = None
    """A dataset repo's commits per hour (None: the store has no commit limit)."""
    remote_written: str | None = None
    """When any machine last wrote the remote (its newest manifest), as last seen here."""
    remote_writer: str | None = None
    remote_bytes: int | None = None
    """What the remote's manifests name (its live size)."""
    refused_until: float | None = None
    """When the store said it takes writes again (a 429's Retry-After; wall clock)."""

    def save(self, path: Path) -> None:
        with replaced_atomically(path) as tmp:
            tmp.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> SyncStatus | None:
        try:
            data = json.loads(path.read_text())
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (OSError, ValueError, TypeError):
            return None

    def seen(self, manifests: dict[str, Manifest]) -> None:
        """What the remote holds, from its manifests: when and by whom it was last written."""
        if not manifests:
            return
        newest = max(manifests.values(), key=lambda m: m.written)
        self.remote_written, self.remote_writer = newest.written, newest.writer.split(":")[0]
        self.remote_bytes = sum(m.bytes for m in manifests.values())

    def commits_last_hour(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(1 for t in self.commits if t > now - 3600)


class StudySync:
    """One local study and its remote (see the module docstring)."""

    def __init__(
        self,
        remote: Remote,
        local: LocalStudy,
        *,
        writer: str | None = None,
        gc_grace_s: float = 0.0,
        lease: tuple[Lease, str] | None = None,
        renews: bool = True,
    ) -> None:
        self.remote, self.local = remote, local
        self.writer = writer or new_holder().holder
        self.gc_grace_s = gc_grace_s
        """Contents younger than this are not collected: 0 for a single writer (SQLite),
        an hour where several machines write (their uploads may not have a manifest yet)."""
        self.lease = lease
        """(this run's lease, its version): renewed in every push; None without one."""
        self.renews = renews
        """False in a worker of `run --workers`: its pushes check the run's lease instead of
        renewing it (the run renews it; on a dataset repo every commit carries it)."""
        tag = hashlib.sha256(remote.shown.encode()).hexdigest()[:8]
        self.state_path = local.state_file(f"{tag}.{STATE}")
        """What this machine last saw of this remote (a study may have a remote and bundles)."""
        self.status_path = local.state_file(f"{tag}.{STATUS}")
        self.status = SyncStatus(remote.shown)

    # -- what a unit holds ----------------------------------------------------------------
    def point_files(self, point: Path, staging: Path) -> dict[str, Path]:
        """A point's newest complete checkpoint, final adapter and run settings, frozen;
        nothing when it has neither a complete checkpoint nor a final adapter (a point
        stopped before its first checkpoint is not a unit: its settings alone would be
        an empty point in the remote)."""
        files: dict[str, Path] = {}
        last, _ = last_complete_checkpoint(point)
        parts = [p for p in (last, point / FINAL_ADAPTER) if p is not None and p.is_dir()]
        if not parts:
            return {}
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
        return self.push_many([unit]).uploaded_bytes

    def push_many(self, units: list[str]) -> PushResult:
        """Upload these units in one commit, the lease renewed in it (raises what the
        network raised; ``LeaseLost`` when another run holds the lease)."""
        staging = self.local.home / STAGING / f"{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            contents: dict[str, dict[str, Path]] = {}
            for unit in units:
                where = staging / unit.replace("/", "_")
                if unit.startswith("points/"):
                    files = self.point_files(self.local.checkpoints / unit.rsplit("/", 1)[-1], where)
                    if files:
                        contents[unit] = files
                else:
                    contents[unit] = self.study_files(where)
            result = self.remote.push_units(contents, self.writer, lease=self.lease, renew=self.renews)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._renewed(result.lease_version)
        if self.remote.squash_if_due() and self.lease is not None:
            self.refresh_lease()
        for unit, generation in result.units.items():
            self._remember(unit, generation)
        return result

    def renew(self) -> None:
        """The lease renewed alone (nothing to push for a heartbeat interval)."""
        if self.lease is not None:
            self._renewed(self.remote.push_units({}, self.writer, lease=self.lease, renew=True).lease_version)

    def _renewed(self, version: str | None) -> None:
        if self.lease is not None and version is not None:
            self.lease = (self.lease[0], version)

    def refresh_lease(self) -> None:
        """After a write without the lease (a squash, remote.json) a repo's head moved: the
        lease's version is read again (and must still be ours)."""
        assert self.lease is not None
        current = self.remote.read_lease()
        if current is None or current[0].holder != self.lease[0].holder:
            raise LeaseLost(self.remote.shown, current[0] if current else None)
        self.lease = (self.lease[0], current[1])

    def push_all(self, units: list[str] | None = None) -> int:
        total = self.push_many(units or self.units()).uploaded_bytes
        self.collect_garbage()
        return total

    def collect_garbage(self) -> int:
        """What no manifest names leaves the remote; under a lease, only while it is still
        this run's (``LeaseLost`` otherwise, nothing deleted)."""
        return self.remote.collect_garbage(self.gc_grace_s, None if self.lease is None else self.lease[0])

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
                staging.mkdir(parents=True, exist_ok=True)
                total += self.remote.pull(m, staging)
                total += _install_study(staging, self.local, with_db=unit == STUDY_UNIT)
                shutil.rmtree(staging, ignore_errors=True)
                self._remember(unit, m.generation)
        return total

    def pull_point(self, m: Manifest) -> int:
        """A point's files as the remote has them; the local folder replaced whole when the
        remote's is newer (another machine trained it further), kept when it is the same.
        A manifest with no files (an older version's, of a point stopped before its first
        checkpoint) brings nothing."""
        name = m.unit.rsplit("/", 1)[-1]
        target = self.local.checkpoints / name
        if not m.files or (self.state().get("units", {}).get(m.unit) == m.generation and target.is_dir()):
            return 0
        fresh = self.local.checkpoints / f".{name}.pulling"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        try:
            size = self.remote.pull(m, fresh)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)  # never a half-pulled point left behind
            raise
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
        # The run and its upload process both write this file: read, change and replace it
        # under one lock, never from two processes at once.
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_path.with_name(self.state_path.name + ".lock")):
            state = self.state() or {"remote": self.remote.shown, "units": {}}
            state["units"][unit] = generation
            with replaced_atomically(self.state_path) as tmp:
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


@dataclass(frozen=True)
class Pushed:
    """A push's answer from wherever it ran."""

    uploaded_bytes: int
    commits: int
    requests: int
    lease_version: str | None = None


class Pusher(Protocol):
    """Where a push runs: ``StudySync.push_many`` in a process of its own
    (``_pusher.PushProcess``). Raises ``LeaseLost`` and ``Throttled`` as the sync does."""

    def push(self, units: list[str]) -> Pushed: ...

    def renew(self) -> Pushed: ...

    def close(self) -> None: ...


class CommitBudget:
    """A dataset repo's commits, shared by every process of the study on this machine
    (the run and its workers): at most ``per_hour`` in any hour, one every ``gap_s``; and
    what each of them waits to push, so that whichever gets the next commit pushes it all
    (every point is on this machine's disk). A JSON file under a lock."""

    def __init__(self, path: Path, per_hour: int) -> None:
        self.path, self.per_hour = path, per_hour
        self.gap_s = 3600.0 / per_hour

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until a commit may be made (0: now)."""
        now = time.time() if now is None else now
        times = self._load(now)["times"]
        if not times:
            return 0.0
        wait = max(0.0, times[-1] + self.gap_s - now)
        if len(times) >= self.per_hour:
            wait = max(wait, times[-self.per_hour] + 3600.0 - now)
        return wait

    def since_last_s(self, now: float | None = None) -> float:
        """Seconds since the study's last commit on this machine, by any of its processes
        (every one of them renews the lease in its commits)."""
        now = time.time() if now is None else now
        times = self._load(now)["times"]
        return now - times[-1] if times else float("inf")

    def record(self, n: int = 1, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._changing(now) as state:
            state["times"] += [now] * n

    def want(self, units: dict[str, float], now: float | None = None) -> None:
        """These units wait for a commit (unit -> when it was last marked)."""
        with self._changing(now) as state:
            for unit, marked in units.items():
                state["wanted"][unit] = max(marked, state["wanted"].get(unit, 0.0))

    def claim(self, now: float | None = None) -> list[str]:
        """Every unit the study's processes wait to push, taken by the caller (who pushes
        them with its own, their files as they are now)."""
        now = time.time() if now is None else now
        with self._changing(now) as state:
            units = sorted(state["wanted"])
            state["wanted"] = {}
            for unit in units:
                state["taken"][unit] = now
        return units

    def pushed_by_others(self, units: dict[str, float], now: float | None = None) -> set[str]:
        """Of the caller's waiting units, those another process took after their last
        mark: already pushed with files at least as new."""
        taken = self._load(time.time() if now is None else now)["taken"]
        return {u for u, marked in units.items() if taken.get(u, -1.0) >= marked}

    @contextlib.contextmanager
    def _changing(self, now: float | None) -> Iterator[dict[str, Any]]:
        now = time.time() if now is None else now
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            state = self._load(now)
            yield state
            with replaced_atomically(self.path) as tmp:
                tmp.write_text(json.dumps(state))

    def _load(self, now: float) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            state = {}
        if not isinstance(state, dict):
            state = {}
        times = state.get("times", [])
        return {
            "times": sorted(t for t in times if isinstance(t, (int, float)) and t > now - 3600.0),
            "wanted": dict(state.get("wanted", {})),
            "taken": {u: t for u, t in dict(state.get("taken", {})).items() if t > now - 86_400},
        }


@dataclass(frozen=True)
class Cadence:
    """When the uploader may commit and must renew the lease."""

    commits_per_hour: int | None
    """A dataset repo's budget (None: the store has no commit limit)."""
    heartbeat_s: float
    """The lease is renewed at least this often (inside a push when there is one)."""
    renews: bool = True
    """False in a worker of `run --workers`: the run's own process renews the lease."""

    @property
    def min_gap_s(self) -> float:
        return 0.0 if self.commits_per_hour is None else 3600.0 / self.commits_per_hour

    @property
    def renew_every_s(self) -> float:
        """On a dataset repo a renewal alone waits half a commit gap longer than a push
        may: a push (which renews too) always gets the slot first, and the renewal still
        comes well inside the grace period (at least two gaps, by the config's check)."""
        return max(self.heartbeat_s, 1.5 * self.min_gap_s)

    def decide(
        self, *, dirty: bool, holds_lease: bool, since_commit: float, since_renewal: float, budget_wait: float
    ) -> str | None:
        """What an uploader does now: "push" what waits, "renew" the lease alone, "wait"
        (the study's shared budget says not yet), or None (nothing to do)."""
        due = holds_lease and self.renews and since_renewal >= self.renew_every_s
        if not dirty and not due:
            return None
        if budget_wait > 0:
            return "wait"
        if dirty and since_commit >= self.min_gap_s:
            return "push"
        return "renew" if due else None


class Uploader:
    """The background thread that pushes what changed (see the module docstring)."""

    def __init__(
        self,
        sync: StudySync,
        pusher: Pusher,
        cadence: Cadence | None = None,
        on_lost: Callable[[LeaseLost], None] | None = None,
        budget: CommitBudget | None = None,
    ) -> None:
        self.sync = sync
        self._pusher = pusher
        self.cadence = cadence or Cadence(None, 60.0)
        self.budget = budget
        """Shared with the study's other processes on this machine (a dataset repo)."""
        self._on_lost = on_lost
        self.lost: LeaseLost | None = None
        self._dirty: dict[str, float] = {}
        """Unit -> when it was last marked (wall clock: compared across processes)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._stopping = threading.Event()
        self._failures = 0
        self._last_commit = 0.0
        self._last_renewal = time.monotonic()
        self._not_before = 0.0
        self._final = False
        self._thread = threading.Thread(target=self._loop, name="optuna-search-remote", daemon=True)
        self._thread.start()

    # -- what the study says changed ----------------------------------------------------------------
    def mark(self, *units: str) -> None:
        """Queue ``units`` for upload; returns at once (a training step never waits)."""
        if self.lost is not None:
            return
        with self._lock:
            for unit in units:
                self._dirty[unit] = time.time()
            self._idle.clear()
        self._wake.set()

    def on_commit(self, commit: Commit, point_dir: Callable[[dict[str, Any]], str | None]) -> None:
        """A ledger commit: the trial's point (its checkpoints and adapter) and the study
        that records it; a trial that merely started changes nothing the remote needs
        (a fresh machine fails it as stale and resumes its point)."""
        if commit.kind in (CommitKind.NEW, CommitKind.CLAIM, CommitKind.RESUME):
            return
        name = point_dir(commit.params) if commit.params else None
        self.mark(*([point_unit(self.sync.local.name, name)] if name else []), self.sync.study_unit)

    @property
    def pending(self) -> list[str]:
        with self._lock:
            return list(self._dirty)

    # -- the thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop and self.lost is None:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            now = time.monotonic()
            if now < self._not_before:
                continue  # throttled, or a backoff: the marks wait, coalesced
            if self.budget is not None:
                self._drop_pushed_by_others()
            with self._lock:
                todo = list(self._dirty)
            wait = self.budget.wait_s() if self.budget is not None and not self._final else 0.0
            since_renewal = now - self._last_renewal
            if self.budget is not None:
                since_renewal = min(since_renewal, self.budget.since_last_s())
            action = self.cadence.decide(
                dirty=bool(todo),
                holds_lease=self.sync.lease is not None,
                since_commit=now - self._last_commit,
                since_renewal=since_renewal,
                budget_wait=wait,
            )
            if action == "wait":
                # The study's shared budget: the marks wait, coalesced; whichever of the
                # study's processes commits next pushes them too.
                assert self.budget is not None
                with self._lock:
                    self.budget.want(dict(self._dirty))
                self._not_before = now + min(wait, 5.0)
            elif action == "push":
                self._push(todo)
            elif action == "renew":
                self._call(self._pusher.renew, [])
            with self._lock:
                if not self._dirty:
                    self._idle.set()

    def _drop_pushed_by_others(self) -> None:
        assert self.budget is not None
        with self._lock:
            waiting = dict(self._dirty)
        done = self.budget.pushed_by_others(waiting)
        with self._lock:
            for unit in done:
                if self._dirty.get(unit) == waiting[unit]:
                    del self._dirty[unit]

    def _push(self, units: list[str]) -> None:
        if self.budget is not None:
            units = sorted(set(units) | set(self.budget.claim()))
        with self._lock:
            for unit in units:
                self._dirty.pop(unit, None)
        # Points first: the database refers to their checkpoints and adapters (one commit
        # on a repo; in this order elsewhere).
        units.sort(key=lambda u: u == self.sync.study_unit)
        self._call(lambda: self._pusher.push(units), units)

    def _call(self, fn: Callable[[], Pushed], units: list[str]) -> None:
        try:
            answer = fn()
        except LeaseLost as e:
            self._lose(e)
            return
        except Exception as e:
            self._failed(e, units)
            return
        now = time.monotonic()
        self._last_renewal = now
        if answer.commits:
            self._last_commit = now
            if self.budget is not None:
                self.budget.record(answer.commits)
            self.sync.status.commits = [t for t in self.sync.status.commits if t > time.time() - 3600]
            self.sync.status.commits += [time.time()] * answer.commits
        self.sync.status.requests += answer.requests
        if self._failures:
            log.info("remote %s: uploads go through again", self.sync.remote.shown)
        self._failures = 0
        self.sync.status.uploaded_bytes += answer.uploaded_bytes
        self.sync.status.last_error = None
        self.sync.status.refused_until = None
        with self._lock:
            done = not self._dirty
        if done:
            self.sync.status.last_sync = time.time()
        self._save_status()

    def _failed(self, e: Exception, units: list[str]) -> None:
        kind = getattr(e, "kind", type(e).__name__)
        with self._lock:
            for unit in units:
                self._dirty.setdefault(unit, time.time())
        retry_after = getattr(e, "retry_after", None)
        if isinstance(e, Throttled) or retry_after is not None:
            delay = float(retry_after or BACKOFF_S[-1])
            self.sync.status.refused_until = time.time() + delay
        else:
            delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        if self._failures == 0:
            log.warning(
                "remote %s: upload of %s failed (%s: %s); retrying in %.0f s, training goes on",
                self.sync.remote.shown,
                ", ".join(units) or "the lease",
                kind,
                str(e).splitlines()[0][:200] if str(e) else "",
                delay,
            )
        self._failures += 1
        self.sync.status.last_error = f"{kind}: {str(e)[:200]}"
        self._save_status()
        self._not_before = time.monotonic() + delay
        self._stopping.wait(min(delay, 1.0))

    def _lose(self, e: LeaseLost) -> None:
        self.lost = e
        log.error("%s", e)
        self.sync.status.lease_lost = str(e)
        self._save_status()
        if self._on_lost is not None:
            self._on_lost(e)
        self._idle.set()

    def _save_status(self) -> None:
        self.sync.status.pending = self.pending
        with contextlib.suppress(OSError):
            self.sync.status.save(self.sync.status_path)

    # -- the end of a run ---------------------------------------------------------------------------------
    def finish(self, timeout_s: float, progress: Callable[[str], None]) -> list[str]:
        """Everything pushed (every unit marked once more, in one commit), waited for at
        most ``timeout_s`` with a progress line every few seconds; returns what is still
        not there (empty: the remote holds the whole study). A run that lost its lease
        pushes nothing and returns every unit."""
        if self.lost is None:
            self._final = True  # the last push does not wait for the budget's gap
            self._last_commit = 0.0
            self._not_before = 0.0
            self.mark(*self.sync.units())
        deadline = time.monotonic() + timeout_s
        last = 0.0
        while self.lost is None and not self._idle.wait(timeout=1.0):
            now = time.monotonic()
            if now >= deadline:
                break
            refused = self.sync.status.refused_until
            if refused is not None and self._not_before >= deadline:
                # The store said when it takes writes again (a 429's Retry-After), and that
                # is past what this run may wait: nothing can pass, so nothing is waited for.
                progress(
                    f"the remote refuses writes until {time.strftime('%H:%M:%S', time.localtime(refused))} (its "
                    f"Retry-After), after storage.remote_timeout: not waiting; the next run pushes what is left"
                )
                break
            if now - last >= 5:
                last = now
                progress(
                    f"waiting for the remote: {len(self.pending)} units to upload "
                    f"({self.sync.status.uploaded_bytes / 2**20:.1f} MiB uploaded so far; at most "
                    f"{deadline - now:.0f} s more)"
                )
        missing = self.pending if self.lost is None else self.sync.units()
        self._stop = True
        self._stopping.set()
        self._wake.set()
        self._pusher.close()  # a push still in flight is given up (its unit's manifest stays valid)
        self._thread.join(timeout=5)
        if not missing and self.cadence.renews:
            # A worker of `run --workers` leaves collecting to its run: another worker's
            # contents may be uploaded and not yet named by their manifest.
            try:
                self.sync.collect_garbage()
            except Exception as e:
                log.debug("remote garbage collection failed: %s", e)
        self._save_status()
        return missing


class LeaseKeeper:
    """The single-writer lease of a SQLite remote: taken at the start by a conditional
    write (``Remote.take_lease``), renewed inside the uploads, released at the end."""

    def __init__(self, remote: Remote, grace_s: float) -> None:
        self.remote, self.grace_s = remote, grace_s
        self.mine: Lease | None = None
        self.version: str | None = None

    def acquire(self) -> tuple[Lease, str]:
        mine = new_holder()
        version = self.remote.take_lease(mine, self.grace_s)
        previous = self.remote.taken_over
        if previous is not None and previous.heartbeat > 0:
            log.warning(
                "remote %s: took over the lease of %s (pid %d), silent for %.0f s (a killed session)",
                self.remote.shown,
                previous.host,
                previous.pid,
                previous.age(mine.heartbeat),
            )
        self.mine, self.version = mine, version
        return mine, version

    def release(self, *, reach_remote: bool = True) -> None:
        if self.mine is not None and reach_remote:
            try:
                self.remote.release(self.mine.holder)
            except Exception as e:
                log.debug("lease release failed: %s", e)


def cadence_for(remote: Remote, heartbeat_s: float, commits_per_hour: int, *, renews: bool = True) -> Cadence:
    return Cadence(commits_per_hour if remote.store.commits_are_scarce else None, heartbeat_s, renews)
