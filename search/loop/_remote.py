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

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna_search.core import Config, UserError, point_dirname
from optuna_search.objectives import cache_root
from optuna_search.storage import (
    STUDY_UNIT,
    Commit,
    LeaseKeeper,
    LocalStudy,
    PushProcess,
    Remote,
    StudySync,
    Uploader,
    point_unit,
    study_checkpoints,
    study_home,
)

log = logging.getLogger("optuna_search")
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

    def finish(self, timeout_s: float) -> list[str]:
        missing = self.uploader.finish(timeout_s, lambda line: log.info("%s", line))
        if self.lease is not None:
            # Unreachable, the lease is left to expire (after storage.grace_period) rather
            # than waited for once more.
            self.lease.release(reach_remote=not missing)
        return missing


def start_remote(config: Config, *, worker: bool = False) -> RemoteSession | None:
    """The run's remote (None without one), ready before any model is loaded."""
    if not config.storage.remote:
        return None
    remote = Remote(config.storage.remote)
    remote.check(write=True)
    local = local_study(config)
    sync = StudySync(remote, local, gc_grace_s=0.0 if local.db is not None else SHARED_GC_GRACE_S)
    lease = None
    if local.db is not None and not worker:
        lease = LeaseKeeper(remote, config.storage.grace_period, config.storage.heartbeat_interval)
        lease.acquire()
    try:
        if not worker:
            pull_study(sync, config.study.name, writing=True)
            if remote.meta() is None:
                remote.write_meta(config.study.name, "sqlite" if local.db is not None else "server")
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    log.info(
        "remote %s: the study is pushed as it runs (checkpoints, finished trials%s)",
        remote.shown,
        ", the database" if local.db is not None else "",
    )
    return RemoteSession(sync, Uploader(sync, PushProcess(sync)), lease)


def pull_study(sync: StudySync, study: str, *, writing: bool) -> bool:
    """The remote's study into the local places when this machine has none or an older
    copy (checkpoints pulled per point when they differ). Returns whether anything came."""
    remote, local = sync.remote, sync.local
    meta = remote.meta()
    if meta is not None and meta.get("study") not in (None, study):
        raise UserError(
            f"remote '{remote.shown}' holds study {meta.get('study')!r}, the config names {study!r}; "
            f"pass --study-name {meta.get('study')} (or use another remote)"
        )
    manifests = remote.manifests()
    problems = remote.verify(manifests)
    if problems:
        raise UserError(
            f"remote '{remote.shown}' does not verify ({len(problems)} problems); nothing was trained or "
            "changed here: push the study again from where it ran, or use another remote:",
            problems[:10],
        )
    wanted = {u: m for u, m in manifests.items() if u != STUDY_UNIT}
    study_m = manifests.get(STUDY_UNIT)
    if study_m is not None and local.db is not None and _needs_study(sync, study_m.generation, writing):
        wanted[STUDY_UNIT] = study_m
    if not wanted:
        return False
    size = sync.pull(wanted)
    if STUDY_UNIT in wanted or size:
        log.info(
            "pulled the study from %s (%.1f MiB%s)",
            remote.shown,
            size / 2**20,
            f", database generation {study_m.generation}" if STUDY_UNIT in wanted and study_m else "",
        )
    return True


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


def reading_location(location: dict[str, str]) -> dict[str, str]:
    """For the reading commands: a study that lives in a remote, pulled (read-only) into
    this machine's cache; the location then points there. A PostgreSQL study keeps its
    database URL; the remote gives its checkpoints and artifacts."""
    url = location.get("storage.remote")
    if not url:
        return location
    remote = Remote(url)
    remote.check(write=False)
    meta = remote.meta()
    if meta is None:
        raise UserError(f"remote '{remote.shown}' holds no study (no remote.json); check the URL")
    study = location.get("study.name") or meta["study"]
    cache = cache_root() / "remotes" / hashlib.sha256(remote.shown.encode()).hexdigest()[:16]
    sqlite = meta.get("storage") == "sqlite"
    local = LocalStudy(
        study, cache / "checkpoints" / study, cache / "artifacts", cache / "study.db" if sqlite else None
    )
    sync = StudySync(remote, local)
    if sqlite and local.db is not None and local.db.exists() and not sync.state():
        local.db.unlink()  # a cache of another remote's: never read as this one's
    pull_study(sync, study, writing=True)
    out = {
        **location,
        "study.name": study,
        "train.output_dir": str(cache / "checkpoints"),
        "storage.artifacts": str(cache / "artifacts"),
    }
    if sqlite:
        out["storage.url"] = f"sqlite:///{cache / 'study.db'}"
    return out


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
