"""A study's remote copy, on any store of ``_stores`` (a folder, S3, GCS, a Hugging Face
Storage Bucket or dataset repo):

    <remote>/remote.json                  format, study name, storage kind
    <remote>/objects/<sha256>             file contents, content-addressed, never changed
    <remote>/manifests/<unit>.json        per unit: generation, writer, time, files -> sha256
    <remote>/lease.json                   who writes a SQLite study's remote, and when it last said so

A unit is what one writer replaces at once: ``study`` (the SQLite database, a consistent
snapshot, and the prediction artifacts), ``points/<study>/<point>`` (a point's newest
complete checkpoint: adapter, optimizer, scheduler, RNG and trainer state, never the base
model; its final adapter; its run settings), ``artifacts/<writer>`` (a machine's
artifacts on a PostgreSQL study, where several machines write). A push uploads the
contents the remote lacks, then the manifests that name them (on a dataset repo: all in
one commit): readers never see half a unit, and a kill during an upload leaves the
previous manifest valid (its contents are still there: only contents no manifest names
are removed). A pull streams each file to disk and checks its SHA-256 before anything
lands in its place.

The lease is taken and renewed by a conditional write (``Store.swap``): of two machines
that take over the same stale lease at the same instant, exactly one wins; a holder
whose renewal finds another version has lost the lease and stops writing. A conflict
with a process of the same run (the same holder: `run --workers` pushes from each
worker) is looked at again and pushed again, never a lost lease.

Fencing. A holder can be frozen between its lease renewal and its manifest writes (the
two are one commit only on a dataset repo). So each takeover of a silent holder starts a
new **epoch**: the lease names it, and every manifest of that epoch lives under
``epochs/<E>/manifests/`` (epoch 0, a remote never taken over, under ``manifests/``).
The new holder copies the manifests of the epoch it took over into its own (``base`` in
the lease until that copy is complete), and from then on readers, the collector and the
next pull read the lease's epoch only: whatever the frozen holder writes when it wakes
lands in an epoch nobody reads, and its contents are collected as garbage. A frozen
collector deletes nothing: it confirms the lease (its holder and epoch) before deleting.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from optuna_search.core import UserError, file_sha256
from optuna_search.storage.remote._fsspec import FsspecStore
from optuna_search.storage.remote._open import open_store
from optuna_search.storage.remote._store import Batch, Conflict, Options, Store, Versioned
from optuna_search.storage.remote.backends.folder import FolderStore

REMOTE_FORMAT = 2
META = "remote.json"
LEASE = "lease.json"
OBJECTS = "objects"
MANIFESTS = "manifests"
EPOCHS = "epochs"
STUDY_UNIT = "study"
SAME_RUN_RETRIES = 8
"""How often a push that met another process of its own run is pushed again, from a fresh
view of the remote, before it is left to the uploader's next try."""


def manifest_dir(epoch: int) -> str:
    """Where an epoch's manifests live (see Fencing in the module docstring)."""
    return MANIFESTS if epoch == 0 else f"{EPOCHS}/{epoch}/{MANIFESTS}"


__all__ = [
    "LEASE",
    "META",
    "STUDY_UNIT",
    "Damaged",
    "Entry",
    "Lease",
    "LeaseLost",
    "Manifest",
    "Remote",
]


def point_unit(study: str, point_dir: str) -> str:
    return f"points/{study}/{point_dir}"


@dataclass(frozen=True)
class Entry:
    """One file of a unit: its contents' SHA-256 (the object's name) and size."""

    sha256: str
    bytes: int


@dataclass
class Manifest:
    unit: str
    generation: int
    files: dict[str, Entry]
    """Relative path -> its entry."""
    writer: str = ""
    written: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REMOTE_FORMAT,
            "unit": self.unit,
            "generation": self.generation,
            "writer": self.writer,
            "written": self.written,
            "files": {rel: {"sha256": e.sha256, "bytes": e.bytes} for rel, e in self.files.items()},
        }

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.files.values())


@dataclass
class Lease:
    holder: str
    host: str
    pid: int
    heartbeat: float
    epoch: int = 0
    """The fencing epoch (module docstring): raised by one at each takeover of a silent holder."""
    base: int | None = None
    """While the epoch's manifests are being copied in: the epoch readers still read."""
    started: int | None = None
    """The holder process's start (clock ticks after boot): a reused pid is another process."""
    boot: str = ""
    """The holder machine's boot id: its pids mean something only on that boot."""

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat

    @property
    def reading_epoch(self) -> int:
        return self.epoch if self.base is None else self.base

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def parse(cls, data: bytes) -> Lease:
        d = json.loads(data)
        base = d.get("base")
        started = d.get("started")
        return cls(
            str(d["holder"]),
            str(d["host"]),
            int(d["pid"]),
            float(d["heartbeat"]),
            int(d.get("epoch", 0)),
            None if base is None else int(base),
            None if started is None else int(started),
            str(d.get("boot", "")),
        )

    def dead_here(self) -> bool:
        """Its holder was a process of this machine, since this boot, that is gone (the
        same pid now, if any, started at another time): a killed run, on this machine."""
        here = _process_identity(os.getpid())
        if not self.boot or self.started is None or here is None or self.host != socket.gethostname():
            return False
        if self.boot != _boot_id():
            return False
        return _process_identity(self.pid) != self.started


class LeaseLost(Exception):
    """This run's lease was taken over by another run: it must stop writing the remote."""

    def __init__(self, shown: str, other: Lease | None) -> None:
        who = f"{other.host} (pid {other.pid})" if other is not None else "another run (the lease is gone)"
        super().__init__(
            f"remote '{shown}': {who} took the lease over while this run was silent; this run stopped writing "
            "the remote (what it trained since is kept here, not there)"
        )
        self.other = other


@dataclass
class PushResult:
    units: dict[str, int] = field(default_factory=dict)
    """Unit -> its generation after the push."""
    uploaded_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    """Files that vanished while being pushed (a checkpoint rotated away)."""
    lease_version: str | None = None
    commits: int = 0


class Damaged(UserError):
    """A file of the remote that is not what its manifest says (found while pulling it)."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class SameRunBusy(Exception):
    """Pushes of the same run's processes met again and again: the uploader tries later
    (the lease is still this run's)."""


class Remote:
    """One remote's files (see the module docstring)."""

    def __init__(self, url: str, *, hub: Any = None) -> None:
        """``hub``: the Hugging Face client for hf:// URLs (default: the library's, or
        ``use_hub_client``'s)."""
        self.url = url
        self.store: Store = open_store(url, Options(hub))
        self.shown = self.store.shown
        self.local = isinstance(self.store, FolderStore)
        self._present: set[str] | None = None
        """The objects this process knows the remote has (listed once, then kept up)."""
        self._manifests: dict[str, Manifest] | None = None
        self._added_since_squash = 0
        self.squash_floor_bytes = 1 << 20
        """A repo's history is not squashed for less than this (each squash is a request)."""
        self.taken_over: Lease | None = None
        """The lease this run took over (None: there was none)."""
        self.writing_epoch: int | None = None
        """The epoch this process writes and reads, once it holds the run's lease (or a
        worker's share of it); None: a reader, which reads the lease's epoch."""

    @property
    def identity(self) -> str:
        """What names this remote on this machine, wherever it was named from: a folder's
        resolved path (``../r`` from two folders is two remotes), else the URL as shown."""
        return str(self.store.root.resolve()) if isinstance(self.store, FolderStore) else self.shown

    @property
    def root(self) -> str:
        return str(self.store.root) if isinstance(self.store, (FolderStore, FsspecStore)) else self.shown

    def _read(self, path: str) -> bytes | None:
        got = self.store.read(path)
        return None if got is None else got.data

    # -- reachable, writable ----------------------------------------------------------------
    def check(self, *, write: bool) -> None:
        """One line, before any model is loaded, when the remote cannot be reached or
        written (no network, no bucket, wrong or missing credentials)."""
        self.store.check(write=write)

    # -- manifests ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        data = self._read(META)
        if data is None:
            return None
        try:
            meta = json.loads(data)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise UserError(f"remote '{self.shown}': {META} is damaged ({e}); use another remote") from None
        return meta

    def write_meta(self, study: str, storage_kind: str) -> None:
        data = json.dumps({"format": REMOTE_FORMAT, "study": study, "storage": storage_kind}).encode()
        self.store.commit(Batch(files={META: data}, message="optuna-search: the study's remote"))

    def reading_epoch(self) -> int:
        """The epoch whose manifests are the remote's: this process's own once it holds
        the lease, else the lease's (one read)."""
        if self.writing_epoch is not None:
            return self.writing_epoch
        current = self.read_lease()
        return 0 if current is None else current[0].reading_epoch

    def manifest(self, unit: str) -> Manifest | None:
        data = self._read(f"{manifest_dir(self.reading_epoch())}/{unit}.json")
        return None if data is None else _parse_manifest(unit, data, self.shown)

    def manifests(self) -> dict[str, Manifest]:
        out = self._manifests_of(self.reading_epoch())
        self._manifests = dict(out)
        return out

    def _manifests_of(self, epoch: int) -> dict[str, Manifest]:
        folder = manifest_dir(epoch)
        out = {}
        for path in sorted(self.store.listing(folder)):
            if not path.endswith(".json") or not path.startswith(folder + "/"):
                continue
            unit = path[len(folder) + 1 : -len(".json")]
            data = self._read(path)
            if data is not None:
                out[unit] = _parse_manifest(unit, data, self.shown)
        return out

    # -- push and pull -----------------------------------------------------------------------
    def push(self, unit: str, files: dict[str, Path], writer: str) -> PushResult:
        return self.push_units({unit: files}, writer)

    def push_units(
        self,
        units: dict[str, dict[str, Path]],
        writer: str,
        *,
        lease: tuple[Lease, str] | None = None,
        renew: bool = True,
    ) -> PushResult:
        """Upload what the remote lacks of each unit's files (relative path -> local
        file), then the manifests that changed, as one commit (``Batch``); the lease
        (``(mine, version)``) renewed in it, conditionally: ``LeaseLost`` when another
        run holds it. A refusal while the lease is still this run's (another of its
        processes wrote: on a dataset repo any commit moves the head; elsewhere its
        renewal) is pushed again from a fresh view of the remote; ``SameRunBusy`` after
        ``SAME_RUN_RETRIES`` such refusals in a row (the uploader tries again later).
        With ``renew`` False (a worker of `run --workers`, where the store has no
        commits) the lease is checked, not renewed, between the contents and the
        manifests: the run's own process renews it."""
        for attempt in range(SAME_RUN_RETRIES):
            try:
                return self._push_once(units, writer, lease, renew)
            except _Stale:
                # Another process of this run wrote since this one last looked: look again
                # (its contents and manifests, the lease's version), then push once more.
                assert lease is not None
                self._present = self._manifests = None
                lease = (lease[0], self.read_lease_version(lease[0]))
                time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
        raise SameRunBusy(
            f"remote '{self.shown}': {SAME_RUN_RETRIES} pushes in a row met this run's other processes; trying later"
        )

    def _push_once(
        self, units: dict[str, dict[str, Path]], writer: str, lease: tuple[Lease, str] | None, renew: bool
    ) -> PushResult:
        result = PushResult()
        if lease is not None:
            self.writing_epoch = lease[0].epoch  # a process that writes under a lease reads its own epoch
        epoch = self.reading_epoch()
        folder = manifest_dir(epoch)
        if self._manifests is None:
            self._manifests = self._manifests_of(epoch)
        if self._present is None:
            self._present = {p.rsplit("/", 1)[-1] for p in self.store.listing(OBJECTS)}
        known = self._manifests if self._manifests is not None else {}
        updated: dict[str, Manifest] = {}
        batch = Batch(message=f"optuna-search: {', '.join(sorted(units))[:200]}")
        for unit, files in sorted(units.items()):
            m = self._stage(unit, files, known.get(unit), writer, batch, result, folder)
            if m is not None:
                updated[unit] = m
        if lease is not None and (renew or isinstance(self.store, _RepoLike)):
            mine, version = lease
            mine.heartbeat = time.time()
            batch.lease = (LEASE, mine.to_bytes(), version)
        elif lease is not None:
            batch.fence = lambda: self.read_lease_version(lease[0])
        if not batch:
            return result
        result.lease_version = self._commit(batch)
        # Only what the store took is remembered (a commit that failed changes nothing here).
        result.commits = 1
        known.update(updated)
        self._manifests = known
        self._present |= {name.rsplit("/", 1)[-1] for name in batch.objects}
        self._present -= {name.rsplit("/", 1)[-1] for name in batch.deletes}
        self._added_since_squash += result.uploaded_bytes + sum(len(d) for d in batch.files.values())
        return result

    def _stage(
        self,
        unit: str,
        files: dict[str, Path],
        previous: Manifest | None,
        writer: str,
        batch: Batch,
        result: PushResult,
        folder: str,
    ) -> Manifest | None:
        """One unit into ``batch``: the contents the remote lacks, and its new manifest
        (None when its files are the previous manifest's)."""
        assert self._present is not None
        entries: dict[str, Entry] = {}
        for rel, path in sorted(files.items()):
            try:
                digest, size = file_sha256(path), path.stat().st_size
            except FileNotFoundError:
                result.skipped.append(rel)
                continue
            entries[rel] = Entry(digest, size)
            name = f"{OBJECTS}/{digest}"
            if digest not in self._present and name not in batch.objects:
                batch.objects[name] = path
                result.uploaded_bytes += size
        if previous is not None and previous.files == entries:
            result.units[unit] = previous.generation
            return None
        generation = (previous.generation if previous else 0) + 1
        m = Manifest(unit, generation, entries, writer, dt.datetime.now(dt.timezone.utc).isoformat())
        batch.files[f"{folder}/{unit}.json"] = json.dumps(m.to_json(), indent=1).encode()
        result.units[unit] = generation
        return m

    def _commit(self, batch: Batch) -> str | None:
        """The batch, its lease renewal conditional: ``LeaseLost`` when another run holds
        the lease, ``_Stale`` when it is still this run's at another version."""
        try:
            return self.store.commit(batch)
        except Conflict:
            if batch.lease is None:
                raise
        current = self.read_lease()
        mine = json.loads(batch.lease[1])["holder"]
        if current is None or current[0].holder != mine:
            raise LeaseLost(self.shown, current[0] if current else None)
        raise _Stale()

    def read_lease_version(self, mine: Lease) -> str:
        """The lease's version, while it is still ``mine`` (``LeaseLost`` otherwise)."""
        current = self.read_lease()
        if current is None or current[0].holder != mine.holder or current[0].epoch != mine.epoch:
            raise LeaseLost(self.shown, current[0] if current else None)
        return current[1]

    def forget(self, digests: set[str]) -> set[str]:
        """Contents found damaged: the next push uploads them again. Returns those of
        them the remote holds (with wrong bytes: to delete before)."""
        there = digests & (self._present or set())
        if self._present is not None:
            self._present -= digests
        return there

    def pull(self, manifest: Manifest, dest: Path) -> int:
        """The unit's files into ``dest``, each streamed to disk and checked against its
        SHA-256 before it is renamed into place. Returns the bytes written."""
        total = 0
        for rel, e in manifest.files.items():
            target = dest / rel
            if target.is_file() and target.stat().st_size == e.bytes and file_sha256(target) == e.sha256:
                continue
            part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                found = self.store.download(f"{OBJECTS}/{e.sha256}", part)
                if not found or file_sha256(part) != e.sha256:
                    why = "missing" if not found else "not what its manifest says (SHA-256)"
                    what = f"{manifest.unit}/{rel}: {why}"
                    raise Damaged(
                        f"remote '{self.shown}' is damaged: {what}; run again on the machine that has the study (it "
                        "repairs the remote), or use another remote",
                        what,
                    )
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
            total += e.bytes
        return total

    def verify(self, manifests: dict[str, Manifest] | None = None) -> list[str]:
        """What is wrong with the remote (nothing: []): every manifest's files there, at
        their size (one listing of the objects, not a request per file)."""
        return [p for p, _ in self.problems(manifests)]

    def problems(self, manifests: dict[str, Manifest] | None = None) -> list[tuple[str, str]]:
        """(what, object digest) for each file a manifest names that the remote lacks
        or holds at another size; on a folder, also at the same size with other bytes."""
        listed = {p.rsplit("/", 1)[-1]: info for p, info in self.store.listing(OBJECTS).items()}
        self._present = set(listed)
        out = []
        for unit, m in (manifests if manifests is not None else self.manifests()).items():
            for rel, e in m.files.items():
                info = listed.get(e.sha256)
                if info is None:
                    out.append((f"{unit}/{rel}: missing", e.sha256))
                elif info.size is not None and int(info.size) != e.bytes:
                    out.append((f"{unit}/{rel}: {info.size} bytes, its manifest says {e.bytes}", e.sha256))
        return out

    def damaged_objects(self, local: dict[str, Path]) -> set[str]:
        """Of the objects whose bytes this machine has (digest -> local file), those the
        remote holds with other bytes: read back and hashed on a folder, compared by the
        store's own checksum where it lists one (S3's ETag is the MD5 of a single-part
        upload). Where neither is possible, none is named."""
        if isinstance(self.store, FolderStore):
            bad = set()
            for digest in local:
                path = self.store.root / OBJECTS / digest
                if path.is_file() and file_sha256(path) != digest:
                    bad.add(digest)
            return bad
        md5 = {p.rsplit("/", 1)[-1]: x.md5 for p, x in self.store.listing(OBJECTS).items() if x.md5}
        return {d for d, path in local.items() if d in md5 and path.is_file() and _md5(path) != md5[d]}

    def collect_garbage(self, older_than_s: float, holder: Lease | None = None) -> int:
        """Remove contents no manifest of the remote's epoch names (older checkpoints,
        interrupted uploads, what a fenced holder wrote), and the manifests of epochs
        before it, leaving contents younger than ``older_than_s`` (another machine's
        upload in flight whose manifest is not written yet), in one request where the
        store takes a list. With ``holder`` (the lease this process writes under) nothing
        is deleted unless the lease is still that holder's, at its epoch (``LeaseLost``
        otherwise). On a dataset repo a unit's contents and manifest arrive in one commit,
        so nothing is in flight; the deletion is conditional on the head the manifests were
        read at (a commit in between: nothing is deleted this time). Returns how many
        files went."""
        head = self.store.head() if isinstance(self.store, _RepoLike) else None
        if holder is not None:
            self.writing_epoch = holder.epoch
        epoch = self.reading_epoch()
        referenced = {e.sha256 for m in self.manifests().values() for e in m.files.values()}
        now = time.time()
        listed = self.store.listing(OBJECTS)
        self._present = {p.rsplit("/", 1)[-1] for p in listed}
        garbage = [
            path
            for path, info in listed.items()
            if path.rsplit("/", 1)[-1] not in referenced
            and not (older_than_s > 0 and now - (info.mtime if info.mtime is not None else now) < older_than_s)
        ]
        if epoch > 0:
            mine = manifest_dir(epoch) + "/"
            garbage += [p for p in self.store.listing(MANIFESTS) if p.startswith(MANIFESTS + "/")]
            garbage += [p for p in self.store.listing(EPOCHS) if p.startswith(EPOCHS + "/") and not p.startswith(mine)]
        if not garbage:
            return 0
        if holder is not None:
            current = self.read_lease()
            if current is None or current[0].holder != holder.holder or current[0].epoch != epoch:
                raise LeaseLost(self.shown, current[0] if current else None)
        if head is not None:
            try:
                self.store.commit(Batch(deletes=garbage, parent=head, message="optuna-search: unused contents"))
            except Conflict:
                return 0
        else:
            self.store.delete(garbage)
        self._present -= {p.rsplit("/", 1)[-1] for p in garbage}
        return len(garbage)

    def squash_if_due(self) -> bool:
        """A dataset repo's history squashed once what was added since the last squash
        exceeds the live bytes (history stays under about twice the live size)."""
        squash = getattr(self.store, "squash", None)
        if squash is None or self._manifests is None:
            return False
        live = sum(m.bytes for m in self._manifests.values())
        if self._added_since_squash <= max(live, self.squash_floor_bytes):
            return False
        self.collect_garbage(0)  # what no manifest names leaves the live files first
        squash()
        self._added_since_squash = 0
        return True

    # -- the lease: one writer per SQLite remote ------------------------------------------------
    def lease(self) -> Lease | None:
        got = self.read_lease()
        return None if got is None else got[0]

    def read_lease(self) -> tuple[Lease, str] | None:
        got: Versioned | None = self.store.read(LEASE)
        if got is None:
            return None
        try:
            return Lease.parse(got.data), got.version
        except (ValueError, KeyError, TypeError):
            return Lease("", "unknown", 0, 0.0), got.version  # unreadable: as stale as can be

    def take_lease(self, mine: Lease, grace_s: float) -> str:
        """The lease, by a conditional write: taken when there is none, when its holder
        released it, has been silent for ``grace_s``, or was killed on this machine;
        refused in one line naming the holder otherwise, or when another run took it at
        the same instant. Taking over a silent holder starts a new epoch, its manifests
        copied from the one it took over (Fencing, module docstring). Returns the
        lease's version."""
        current = self.read_lease()
        if current is not None and current[0].age() < grace_s and not current[0].dead_here():
            raise self._in_use(current[0], grace_s)
        if current is not None:
            was = current[0]
            silent = was.heartbeat > 0 or was.base is not None  # not released (or its copy never ended)
            mine.epoch = was.epoch + 1 if silent else was.epoch
            mine.base = was.reading_epoch if silent else None
        try:
            version = self.store.swap(LEASE, mine.to_bytes(), current[1] if current else None)
        except Conflict:
            winner = self.lease()
            raise UserError(
                f"remote '{self.shown}' was taken at the same instant by "
                f"{winner.host + ' (pid ' + str(winner.pid) + ')' if winner else 'another run'}: one run writes a "
                "SQLite study's remote at a time; this one wrote nothing"
            ) from None
        self.taken_over = current[0] if current is not None else None
        if mine.base is not None:
            version = self._adopt(mine, version)
        self.writing_epoch = mine.epoch
        return version

    def _adopt(self, mine: Lease, version: str) -> str:
        """A new epoch's manifests: those of the epoch it took over, copied in (a kill here
        leaves ``base`` in the lease: readers read the old epoch, the next taker copies it
        again); then the lease says the epoch is whole. Returns the lease's version."""
        assert mine.base is not None
        old = self._manifests_of(mine.base)
        folder = manifest_dir(mine.epoch)
        copies = {f"{folder}/{unit}.json": json.dumps(m.to_json(), indent=1).encode() for unit, m in old.items()}
        if copies:
            self.store.commit(Batch(files=copies, message=f"optuna-search: epoch {mine.epoch}"))
            version = self.read_lease_version(mine)  # on a dataset repo that commit moved the head
        mine.base = None
        mine.heartbeat = time.time()
        try:
            version = self.store.swap(LEASE, mine.to_bytes(), version)
        except Conflict:
            raise LeaseLost(self.shown, self.lease()) from None
        self._manifests = None
        return version

    def _in_use(self, current: Lease, grace_s: float) -> UserError:
        return UserError(
            f"remote '{self.shown}' is in use by {current.host} (pid {current.pid}, last heartbeat "
            f"{current.age():.0f} s ago): one run writes a SQLite study's remote at a time; wait for it, or "
            f"if it died, run again after {grace_s:.0f} s without a heartbeat (it is then taken over)"
        )

    def release(self, holder: str, version: str | None = None) -> None:
        current = self.read_lease()
        if current is None or current[0].holder != holder:
            return
        with contextlib.suppress(FileNotFoundError, Conflict):
            # Released by marking it stale (a conditional write): deleting would race a takeover.
            gone = Lease(holder, current[0].host, current[0].pid, 0.0, current[0].epoch, current[0].base)
            self.store.swap(LEASE, gone.to_bytes(), current[1])


def new_holder() -> Lease:
    host = socket.gethostname()
    return Lease(
        f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        host,
        os.getpid(),
        time.time(),
        started=_process_identity(os.getpid()),
        boot=_boot_id(),
    )


def _process_identity(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot; Linux's /proc), None when there
    is no such process (or no /proc to ask)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command's name
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    """This boot of this machine, and this process's pid namespace (a container beside
    this one, on the same kernel, numbers its processes apart)."""
    try:
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _parse_manifest(unit: str, data: bytes, shown: str) -> Manifest:
    try:
        d = json.loads(data)
        files = d["files"]
        if d.get("format") != REMOTE_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {d.get('format')!r}")
        entries = {}
        for rel, meta in files.items():
            if (
                Path(rel).is_absolute()
                or ".." in Path(rel).parts
                or not isinstance(meta.get("sha256"), str)
                or not isinstance(meta.get("bytes"), int)
            ):
                raise ValueError(f"entry {rel!r}")
            entries[rel] = Entry(meta["sha256"], meta["bytes"])
        return Manifest(unit, int(d["generation"]), entries, str(d.get("writer", "")), str(d.get("written", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"remote '{shown}': the manifest of {unit} is not one this tool writes ({e}); it was edited or "
            "damaged: run again on the machine that has the study (it repairs the remote), or use another remote"
        ) from None


class _Stale(Exception):
    """A conditional write refused while the lease is still this run's (another of its
    processes wrote since): look at the remote again and push once more."""


@runtime_checkable
class _RepoLike(Protocol):
    """A store whose writes are commits on a head (a dataset repo)."""

    def head(self) -> str: ...

    def squash(self) -> str: ...
