"""A run's remote (``storage.remote`` / ``run --remote URL``), from the study loop's side:

    start   the remote reachable and writable (one line otherwise, before any model), its
            lease (a SQLite study: one writer), verified, and the study pulled when this
            machine lacks it or has an older copy; then the background uploader
    during  the ledger's commits and every checkpoint mark what to upload
    finish  the last uploads waited for (bounded); what is still missing is named

The same pull, without lease or uploads, imports a bundle (`run --resume-from`: a remote
in a folder, e.g. a read-only Kaggle input) and gives the reading commands (`status`,
`report`, `predict`, ...) a study that lives only in a remote.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from optuna_search.core import Config, StudyLocation, UserError, point_dirname
from optuna_search.objectives import cache_root
from optuna_search.search.loop import request_stop
from optuna_search.storage import (
    FINAL_ADAPTER,
    RESUME_FILES,
    STUDY_UNIT,
    Commit,
    CommitBudget,
    Damaged,
    Lease,
    LeaseKeeper,
    LeaseLost,
    LocalStudy,
    PushProcess,
    Remote,
    StudySync,
    SyncStatus,
    Uploader,
    cadence_for,
    point_unit,
    study_checkpoints,
    study_home,
)

log = logging.getLogger("optuna_search")
T = TypeVar("T")
LEASE_ENV = "OPTUNA_SEARCH_REMOTE_LEASE"
"""The run's lease, handed to its workers (their pushes renew it in their commits)."""
SHARED_GC_GRACE_S = 3600.0
"""Where several machines write one remote (a PostgreSQL study), contents are collected
only an hour after they lost their last manifest: another machine's upload in flight has
no manifest yet."""


def local_study(config: Config) -> LocalStudy:
    db = _sqlite_file(config.storage.url)
    return LocalStudy(
        config.study.name,
        study_checkpoints(config.train.output_dir, config.study.name),
        Path(config.storage.artifacts),
        db,
    )


def _sqlite_file(url: str) -> Path | None:
    home = study_home(url)
    if home is None:
        return None
    from sqlalchemy.engine import make_url

    return home / Path(str(make_url(url).database)).name


@dataclass
class RemoteSession:
    sync: StudySync
    uploader: Uploader
    lease: LeaseKeeper | None

    def on_commit(self, commit: Commit) -> None:
        self.uploader.on_commit(commit, point_dirname)

    def on_checkpoint(self, params: dict[str, Any]) -> None:
        self.uploader.mark(point_unit(self.sync.local.name, point_dirname(params)))

    def before_point(self, params: dict[str, Any]) -> None:
        """A shared (PostgreSQL) study: the point's newest checkpoint from the remote, when
        another machine trained it further (it died; its trial came back to us)."""
        if self.sync.local.db is not None:
            return
        m = self.sync.remote.manifest(point_unit(self.sync.local.name, point_dirname(params)))
        if m is not None:
            pulled = self.sync.pull_point(m)
            if pulled:
                log.info(
                    "pulled %s's checkpoint from the remote (%.1f MiB, written by %s)",
                    point_dirname(params),
                    pulled / 2**20,
                    m.writer.split(":")[0] or "another machine",
                )

    def worker_env(self) -> dict[str, str]:
        """What a worker of `run --workers N` gets in its own environment: the run's lease,
        which its pushes check (on a dataset repo: renew) in their commits."""
        if self.lease is None or self.lease.mine is None:
            return {}
        return {LEASE_ENV: json.dumps(self.lease.mine.__dict__)}

    @property
    def lost(self) -> LeaseLost | None:
        """Set once another run took this run's lease over (it then wrote nothing more)."""
        return self.uploader.lost

    def finish(self, timeout_s: float) -> list[str]:
        missing = self.uploader.finish(timeout_s, lambda line: log.info("%s", line))
        if self.lost is not None:
            return missing  # the lease is theirs: nothing to release
        if self.lease is not None:
            # Unreachable, the lease is left to expire (after storage.grace_period) rather
            # than waited for once more.
            self.lease.release(reach_remote=not missing)
        return missing


def start_remote(config: Config, *, worker: bool = False, drop_damaged: bool = False) -> RemoteSession | None:
    """The run's remote (None without one), ready before any model is loaded."""
    if not config.storage.remote:
        return None
    remote = Remote(config.storage.remote)
    local = local_study(config)
    _refuse_overlap(remote, local)
    remote.check(write=True)
    lease = None
    held = None
    if local.db is not None and not worker:
        lease = LeaseKeeper(remote, config.storage.grace_period)
        held = lease.acquire()
    elif local.db is not None:
        held = _workers_lease(remote)
    sync = StudySync(
        remote, local, gc_grace_s=0.0 if local.db is not None else SHARED_GC_GRACE_S, lease=held, renews=not worker
    )
    try:
        if not worker:
            _local_errors(
                lambda: pull_study(sync, config.study.name, writing=True, repair=True, drop_damaged=drop_damaged),
                local,
            )
            if remote.meta() is None:
                remote.write_meta(config.study.name, "sqlite" if local.db is not None else "server")
                if sync.lease is not None:
                    sync.refresh_lease()  # on a dataset repo that commit moved the head the lease is tied to
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    log.info(
        "remote %s: the study is pushed as it runs (checkpoints, finished trials%s)",
        remote.shown,
        ", the database" if local.db is not None else "",
    )
    cadence = cadence_for(
        remote, config.storage.heartbeat_interval, config.storage.remote_commits_per_hour, renews=not worker
    )
    budget = None
    if cadence.commits_per_hour is not None:
        tag = hashlib.sha256(remote.shown.encode()).hexdigest()[:8]
        budget = CommitBudget(local.state_file(f"{tag}.commits.json"), cadence.commits_per_hour)
    if cadence.commits_per_hour is not None:
        log.info(
            "remote %s is a dataset repo: at most %d commits an hour (one every %.0f s), uploads coalesced",
            remote.shown,
            cadence.commits_per_hour,
            cadence.min_gap_s,
        )
    sync.status.commit_budget = cadence.commits_per_hour
    uploader = Uploader(sync, PushProcess(sync), cadence, on_lost=lambda e: request_stop(), budget=budget)
    return RemoteSession(sync, uploader, lease)


def _workers_lease(remote: Remote) -> tuple[Lease, str] | None:
    """A worker's share of its run's lease (None: a worker started on its own)."""
    given = os.environ.get(LEASE_ENV)
    if not given:
        return None
    mine = Lease(**json.loads(given))
    current = remote.read_lease()
    if current is None or current[0].holder != mine.holder or current[0].epoch != mine.epoch:
        raise UserError(f"remote '{remote.shown}': this worker's run no longer holds the remote's lease; it stops")
    remote.writing_epoch = mine.epoch
    return mine, current[1]


def _refuse_overlap(remote: Remote, local: LocalStudy) -> None:
    """A folder remote that is the study's working folder, or lies in (or is) the folders
    the study writes (train.output_dir, storage.artifacts), would mix its files with the
    study's or push its own folders as points; anywhere else, a subfolder of the working
    folder too (``./backup``, a drive mounted at ``./drive``), is the user's to choose."""
    if not remote.local:
        return
    root = Path(remote.root).resolve()
    folders = [p.resolve() for p in (local.checkpoints.parent, local.artifacts)]
    clash = next((p for p in folders if root == p or p in root.parents), None)
    if clash is None and root == local.home.resolve():
        clash = root
    if clash is not None:
        raise UserError(
            f"remote '{remote.shown}' overlaps this study's own files ('{clash}'); give a folder apart from the "
            "working folder itself, train.output_dir and storage.artifacts (a subfolder such as ./backup, another "
            "disk or a mount)"
        )


def _local_errors(fn: Callable[[], T], local: LocalStudy) -> T:
    """A local folder this run cannot write (read-only working folder or cache): one line."""
    try:
        return fn()
    except OSError as e:  # no permission, or a read-only file system
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise UserError(
            f"cannot write '{e.filename or local.home}' here ({e.strerror}); run from a writable folder "
            "(or set train.output_dir / storage.url / storage.artifacts to one)"
        ) from None


def pull_study(sync: StudySync, study: str, *, writing: bool, repair: bool = False, drop_damaged: bool = False) -> bool:
    """The remote's study into the local places when this machine has none or an older
    copy (checkpoints pulled per point when they differ). Returns whether anything came.

    A remote that does not verify is refused in one line, except on the machine whose
    study it is (it has the remote's newest database here): that machine repairs it,
    pushing again every unit with damaged or missing contents. Damage confined to the
    newest checkpoint of unfinished points (no final adapter) can be dropped instead
    (``drop_damaged``: said, never silent): those points train again from their start,
    and, under this run's lease, their manifests in the remote are emptied. A refusal
    leaves no point pulled by this call behind."""
    remote, local = sync.remote, sync.local
    meta = remote.meta()
    if meta is not None and meta.get("study") not in (None, study):
        raise UserError(
            f"remote '{remote.shown}' holds study {meta.get('study')!r}, the config names {study!r}; "
            f"pass --study-name {meta.get('study')} (or use another remote)"
        )
    manifests = remote.manifests()
    _note(sync, manifests)
    study_m = manifests.get(STUDY_UNIT)
    owner = repair and _has_the_study(sync, study_m)
    problems = remote.problems(manifests)
    if owner:
        problems += _damaged_here(sync, manifests)
    if problems and owner:
        _repair(sync, manifests, problems)
        return False
    if problems:
        units = _units_of(manifests, problems)
        if not (drop_damaged and _droppable(manifests, units)):
            raise _does_not_verify(remote, [p for p, _ in problems], units if _droppable(manifests, units) else [])
        _drop(sync, manifests, units)
    points = [u for u in manifests if u.startswith("points/") and manifests[u].files]
    if meta is not None and meta.get("storage") == "sqlite" and study_m is None and points and local.db is not None:
        raise UserError(
            f"remote '{remote.shown}' holds {len(points)} points but no study database (manifests/study.json is "
            "missing): it was damaged; nothing was trained or changed here. Run again on the machine that has the "
            "study (it pushes its database), or use another remote"
        )
    wanted = {u: m for u, m in manifests.items() if u != STUDY_UNIT}
    if study_m is not None and local.db is not None and _needs_study(sync, study_m.generation, writing):
        wanted[STUDY_UNIT] = study_m
    if not wanted:
        return False
    for m in wanted.values():
        _warn_incomplete(m)
    size = _pull_points(sync, {u: m for u, m in wanted.items() if u.startswith("points/")}, drop_damaged)
    size += sync.pull({u: m for u, m in wanted.items() if not u.startswith("points/")})
    if STUDY_UNIT in wanted or size:
        log.info(
            "pulled the study from %s (%.1f MiB%s)",
            remote.shown,
            size / 2**20,
            f", database generation {study_m.generation}" if STUDY_UNIT in wanted and study_m else "",
        )
    return True


def _pull_points(sync: StudySync, points: dict[str, Any], drop_damaged: bool) -> int:
    """Each point's files, checked as they arrive (damage of the same size shows only then):
    a damaged unfinished point is dropped with ``drop_damaged``; otherwise the points this
    call pulled are removed again and the refusal raised."""
    fresh: list[Path] = []
    size = 0
    for unit, m in sorted(points.items()):
        target = sync.local.checkpoints / unit.rsplit("/", 1)[-1]
        existed = target.exists()
        try:
            size += sync.pull_point(m)
        except Damaged as e:
            if drop_damaged and _droppable(points, [unit]):
                _drop(sync, points, [unit])
                continue
            for folder in fresh:
                shutil.rmtree(folder, ignore_errors=True)
            raise _does_not_verify(sync.remote, [e.what], [unit] if _droppable(points, [unit]) else []) from None
        if not existed and target.exists():
            fresh.append(target)
    return size


def _units_of(manifests: dict[str, Any], problems: list[tuple[str, str]]) -> list[str]:
    bad = {digest for _, digest in problems}
    return sorted(u for u, m in manifests.items() if any(e.sha256 in bad for e in m.files.values()))


def _droppable(manifests: dict[str, Any], units: list[str]) -> bool:
    """Every unit a point whose remote copy is an unfinished checkpoint (no final adapter)."""
    return bool(units) and all(
        u.startswith("points/") and not any(rel.startswith(f"{FINAL_ADAPTER}/") for rel in manifests[u].files)
        for u in units
    )


def _drop(sync: StudySync, manifests: dict[str, Any], units: list[str]) -> None:
    """The damaged checkpoints of unfinished points, left out: said, and (under this run's
    lease) their manifests emptied in the remote, so no machine resumes from them."""
    for unit in units:
        log.warning(
            "remote %s: %s's newest checkpoint is damaged; dropped (--drop-damaged): that point trains again "
            "from its start",
            sync.remote.shown,
            unit.rsplit("/", 1)[-1],
        )
        manifests.pop(unit, None)
    if sync.lease is not None:
        result = sync.remote.push_units({u: {} for u in units}, sync.writer, lease=sync.lease)
        sync._renewed(result.lease_version)


def _does_not_verify(remote: Remote, problems: list[str], droppable: list[str]) -> UserError:
    """The refusal; ``droppable``: the unfinished points whose damage `--drop-damaged` drops."""
    hint = ""
    if droppable:
        names = ", ".join(u.rsplit("/", 1)[-1] for u in droppable)
        hint = (
            f" The damage is in the newest checkpoint of unfinished points ({names}): `run --drop-damaged` drops "
            "it and those points train again from their start."
        )
    return UserError(
        f"remote '{remote.shown}' does not verify ({len(problems)} problems); nothing was trained or "
        "changed here: run again on the machine that has the study (it repairs the remote), or use another "
        f"remote.{hint}",
        problems[:10],
    )


def _note(sync: StudySync, manifests: dict[str, Any]) -> None:
    """What `status` says of the remote on this machine: when and by whom it was last written."""
    saved = SyncStatus.load(sync.status_path) or SyncStatus(sync.remote.shown)
    saved.seen(manifests)
    sync.status.seen(manifests)
    with contextlib.suppress(OSError):
        saved.save(sync.status_path)


def _has_the_study(sync: StudySync, study_m: Any) -> bool:
    """This machine holds the study the remote is a copy of: its database, at the
    generation the remote has (or newer: pushed from here)."""
    db = sync.local.db
    seen = sync.state().get("units", {}).get(STUDY_UNIT)
    if db is None or not db.exists() or seen is None:
        return False
    return study_m is None or seen >= study_m.generation


def _damaged_here(sync: StudySync, manifests: dict[str, Any]) -> list[tuple[str, str]]:
    """Objects the remote holds with other bytes than this machine's copies of them."""
    local: dict[str, Path] = {}
    where: dict[str, str] = {}
    for unit, m in manifests.items():
        if not unit.startswith(f"points/{sync.local.name}/"):
            continue
        folder = sync.local.checkpoints / unit.rsplit("/", 1)[-1]
        for rel, e in m.files.items():
            if (folder / rel).is_file():
                local[e.sha256] = folder / rel
                where[e.sha256] = f"{unit}/{rel}"
    bad = sync.remote.damaged_objects(local)
    return [(f"{where[d]}: other bytes than this machine's copy", d) for d in sorted(bad)]


def _repair(sync: StudySync, manifests: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    damaged = {digest for _, digest in problems}
    units = sorted(u for u, m in manifests.items() if any(e.sha256 in damaged for e in m.files.values()))
    log.warning(
        "remote %s: %d damaged or missing files (%s); this machine has the study and pushes %s again",
        sync.remote.shown,
        len(problems),
        "; ".join(p for p, _ in problems[:3]),
        ", ".join(units),
    )
    there = sync.remote.forget(damaged)
    sync.remote.store.delete([f"objects/{d}" for d in sorted(there)])
    sync.push_many([u for u in units if u == STUDY_UNIT or u.startswith(f"points/{sync.local.name}/")] or sync.units())


def _warn_incomplete(m: Any) -> None:
    """A point whose newest checkpoint lacks a file a resume needs (an edited remote)
    starts that checkpoint over: said, not silently resumed with a fresh optimizer."""
    if not m.unit.startswith("points/"):
        return
    folders = {rel.split("/", 1)[0] for rel in m.files if rel.startswith("checkpoint-")}
    for folder in sorted(folders):
        lacking = [f for f in RESUME_FILES if f"{folder}/{f}" not in m.files]
        if lacking:
            log.warning(
                "remote's %s/%s lacks %s: not a checkpoint a resume can use; that point starts over",
                m.unit.rsplit("/", 1)[-1],
                folder,
                ", ".join(lacking),
            )


def _needs_study(sync: StudySync, generation: int, writing: bool) -> bool:
    db = sync.local.db
    assert db is not None
    seen = sync.state().get("units", {}).get(STUDY_UNIT)
    if not db.exists():
        return True
    if seen is None:
        if not writing:
            raise UserError(
                f"'{db}' already exists and is not the copy of remote '{sync.remote.shown}' (nothing here says "
                "it was pulled from it); move it away to take the remote's study, or point --storage elsewhere"
            )
        raise UserError(
            f"both '{db}' here and remote '{sync.remote.shown}' hold the study, and nothing here says they "
            "are the same: move the local database away to continue the remote's (it may be newer), or use "
            "another remote for this one"
        )
    return seen < generation


def import_remote(path: str, config: Config) -> None:
    """`run --resume-from DIR`: the study of a remote in a folder (a bundle written by
    `export`), pulled read-only; a second import of the same bundle changes nothing."""
    remote = Remote(path)
    remote.check(write=False)
    pull_study(StudySync(remote, local_study(config)), config.study.name, writing=False)


def write_through(location: StudyLocation, grace_s: float, write: Callable[[StudyLocation], T]) -> T:
    """A command that writes a study it reads from a remote (``ensemble --remote``): under
    the remote's lease (refused while a run holds it), the study pulled into this machine's
    cache, ``write(location)`` on it, the study pushed back (the database, or on a server
    database this machine's artifacts), the lease released. The remote gets what the
    command stored, not only this machine's cache."""
    assert location.remote is not None
    remote = Remote(location.remote)
    remote.check(write=True)
    keeper = LeaseKeeper(remote, grace_s)
    held = keeper.acquire()
    try:
        here, sync = _pulled(location, remote, held)
        result = write(here)
        sync.push_many([sync.study_unit])
    finally:
        keeper.release()
    log.info("remote %s: the study pushed with what this command stored", remote.shown)
    return result


def reading_location(location: StudyLocation) -> StudyLocation:
    """For the reading commands: a study that lives in a remote, pulled (read-only) into
    this machine's cache; the location then points there. A PostgreSQL study keeps its
    database URL; the remote gives its checkpoints and artifacts."""
    url = location.remote
    if not url:
        return location
    remote = Remote(url)
    remote.check(write=False)
    return _pulled(location, remote)[0]


def _pulled(
    location: StudyLocation, remote: Remote, lease: tuple[Lease, str] | None = None
) -> tuple[StudyLocation, StudySync]:
    """The remote's study in this machine's cache, and the location that points there."""
    meta = remote.meta()
    if meta is None:
        raise UserError(f"remote '{remote.shown}' holds no study (no remote.json); check the URL")
    study = location.study_name or meta["study"]
    cache = cache_root() / "remotes" / hashlib.sha256(remote.identity.encode()).hexdigest()[:16]
    sqlite = meta.get("storage") == "sqlite"
    if not sqlite and (location.storage_url or "sqlite:").startswith("sqlite:"):
        raise UserError(
            f"remote '{remote.shown}' is the remote of study {study!r}, whose trials live in a server database "
            "(PostgreSQL): the remote keeps its checkpoints and artifacts only; pass the study's database too, "
            f"--storage postgresql://USER@HOST/DB, with --remote {remote.shown}"
        )
    local = LocalStudy(
        study, cache / "checkpoints" / study, cache / "artifacts", cache / "study.db" if sqlite else None
    )
    sync = StudySync(remote, local, lease=lease)
    if sqlite and local.db is not None and local.db.exists() and not sync.state():
        local.db.unlink()  # a cache of another remote's: never read as this one's
    # A reading command needs no unfinished checkpoint: a damaged one is left out, said.
    _local_errors(lambda: pull_study(sync, study, writing=True, drop_damaged=lease is None), local)
    out = location.replace(
        study_name=study,
        checkpoints_dir=str(cache / "checkpoints"),
        artifacts_dir=str(cache / "artifacts"),
        storage_url=f"sqlite:///{cache / 'study.db'}" if sqlite else location.storage_url,
    )
    return out, sync


def export_to(location_config: Config, output: str) -> dict[str, Any]:
    """`export --output DIR`: the study pushed whole to a new remote in a folder."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output '{out}' is a file; a bundle is a directory: give a new directory path")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"bundle directory '{out}' exists and is not empty; choose a new --output")
    remote = Remote(str(out))
    local = local_study(location_config)
    if local.db is None:
        raise UserError(
            "export works on SQLite studies; a server database (PostgreSQL) is reached directly by every "
            "session (back it up with the server's tools, e.g. pg_dump; --remote keeps its checkpoints)"
        )
    remote.check(write=True)
    sync = StudySync(remote, local)
    remote.write_meta(location_config.study.name, "sqlite")
    uploaded = sync.push_all()
    manifests = remote.manifests()
    return {"files": sum(len(m.files) for m in manifests.values()), "total_bytes": uploaded, "units": sorted(manifests)}
