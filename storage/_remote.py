"""A study's remote copy at any fsspec URL: a local or mounted folder, ``s3://`` (s3fs;
S3-compatible services through ``AWS_ENDPOINT_URL`` and the usual credential variables),
``gs://`` (gcsfs) or ``hf://`` (a Hugging Face dataset repo; the token from ``HF_TOKEN``).

    <remote>/remote.json                  format, study name, storage kind
    <remote>/objects/<sha256>             file contents, content-addressed, never changed
    <remote>/manifests/<unit>.json        per unit: generation, writer, time, files -> sha256
    <remote>/lease.json                   who writes a SQLite study's remote, and when it last said so

A unit is what one writer replaces at once: ``study`` (the SQLite database, a consistent
snapshot, and the prediction artifacts), ``points/<study>/<point>`` (a point's newest
complete checkpoint: adapter, optimizer, scheduler, RNG and trainer state, never the base
model; its final adapter; its run settings), ``artifacts/<writer>`` (a machine's
artifacts on a PostgreSQL study, where several machines write). A push uploads the files
the remote lacks, then replaces the unit's manifest: readers never see half a unit, and
a kill during an upload leaves the previous manifest valid (its files are still there:
only files no manifest names are removed). A pull verifies every file's SHA-256 before
anything lands in its place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from optuna_search.core import UserError, file_sha256, replaced_atomically

REMOTE_FORMAT = 2
META = "remote.json"
LEASE = "lease.json"
OBJECTS = "objects"
MANIFESTS = "manifests"
STUDY_UNIT = "study"


def redact_remote(url: str) -> str:
    """The URL without credentials (user:password@, a token in the query)."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def point_unit(study: str, point_dir: str) -> str:
    return f"points/{study}/{point_dir}"


@dataclass
class Manifest:
    unit: str
    generation: int
    files: dict[str, dict[str, Any]]
    """Relative path -> {"sha256", "bytes"}."""
    writer: str = ""
    written: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REMOTE_FORMAT,
            "unit": self.unit,
            "generation": self.generation,
            "writer": self.writer,
            "written": self.written,
            "files": self.files,
        }

    @property
    def bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())


@dataclass
class Lease:
    holder: str
    host: str
    pid: int
    heartbeat: float

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat


@dataclass
class PushResult:
    unit: str
    generation: int
    uploaded_bytes: int = 0
    uploaded_files: int = 0
    total_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    """Files that vanished while being pushed (a checkpoint rotated away)."""


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    options: dict[str, Any] = {}
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        options["use_listings_cache"] = False
        # An endpoint that does not answer costs seconds, not minutes: the uploader retries
        # on its own schedule, and a run's end waits a bounded time.
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}
    if scheme not in ("", "file"):
        # A fresh client per remote: fsspec's cached one keeps the connections of an
        # endpoint that went away, and its listings.
        options["skip_instance_cache"] = True
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme, scheme)
        raise UserError(
            f"remote '{redact_remote(url)}' needs a file system package that is not installed ({e}); "
            f"`pip install 'optuna-search[{extra}]'`"
        ) from None
    except (ValueError, TypeError) as e:
        raise UserError(
            f"remote '{redact_remote(url)}' is not a URL this tool can write to ({e}); give a folder, "
            "s3://bucket/prefix, gs://bucket/prefix or hf://datasets/USER/REPO"
        ) from None
    return fs, root.rstrip("/")


class Remote:
    """One remote's files (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = redact_remote(url)
        self.fs, self.root = _filesystem(url)
        self.local = type(self.fs).__name__ == "LocalFileSystem"
        self._read_options: dict[str, Any] = {"max_concurrency": 1} if urlsplit(url).scheme == "s3" else {}
        """s3fs asks for an object's size (a request) before reading it when it may read in
        parallel; manifests and the lease are small, read in one request."""

    # -- paths and bytes --------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _put(self, path: str, data: bytes) -> None:
        """One whole file or none: a local file is renamed into place; an object store
        replaces an object in one request."""
        if self.local:
            with replaced_atomically(Path(path)) as tmp:
                tmp.write_bytes(data)
        else:
            self.fs.pipe_file(path, data)

    def _put_file(self, path: str, source: Path) -> None:
        if self.local:
            with replaced_atomically(Path(path)) as tmp:
                shutil.copyfile(source, tmp)
        else:
            self.fs.put_file(str(source), path)

    def _read(self, path: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(path, **self._read_options))
        except FileNotFoundError:
            return None

    def _invalidate(self) -> None:
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate()

    # -- reachable, writable ----------------------------------------------------------------
    def check(self, *, write: bool) -> None:
        """One line, before any model is loaded, when the remote cannot be reached or
        written (no network, no bucket, wrong or missing credentials)."""
        try:
            self._invalidate()
            if self.local:
                if write:
                    Path(self.root).mkdir(parents=True, exist_ok=True)
                if not Path(self.root).is_dir():
                    raise FileNotFoundError(self.root)
            elif self.fs.exists(self.root):
                self.fs.ls(self.root)  # a bucket that exists but refuses listing says so here
            if write:
                probe = self._path(f".probe-{uuid.uuid4().hex[:8]}")
                self._put(probe, b"probe")
                self.fs.rm_file(probe)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({_reason(e)}); "
                + _fix_for(self.url)
            ) from None

    # -- manifests ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        data = self._read(self._path(META))
        return None if data is None else json.loads(data)

    def write_meta(self, study: str, storage_kind: str) -> None:
        self._put(
            self._path(META), json.dumps({"format": REMOTE_FORMAT, "study": study, "storage": storage_kind}).encode()
        )

    def manifest(self, unit: str) -> Manifest | None:
        data = self._read(self._path(MANIFESTS, unit + ".json"))
        return None if data is None else _parse_manifest(unit, data, self.shown)

    def manifests(self) -> dict[str, Manifest]:
        self._invalidate()
        base = self._path(MANIFESTS)
        try:
            paths = [p for p in self.fs.find(base) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        out = {}
        for p in paths:
            unit = p[len(base.rstrip("/")) + 1 : -len(".json")]
            data = self._read(p)
            if data is not None:
                out[unit] = _parse_manifest(unit, data, self.shown)
        return out

    # -- push and pull -----------------------------------------------------------------------
    def push(self, unit: str, files: dict[str, Path], writer: str) -> PushResult:
        """Upload what the remote lacks of ``files`` (relative path -> local file), then
        replace the unit's manifest (left as it is when nothing changed). The contents the
        current manifest names are there (a manifest is written after its contents, and
        garbage collection keeps what a manifest names); the others are uploaded (the same
        bytes under the same name, should they be there), except on the unit's first push,
        where one listing finds what other units share with it (a tokenizer, the run's
        arguments)."""
        previous = self.manifest(unit)
        present = {f["sha256"] for f in previous.files.values()} if previous else set()
        result = PushResult(unit, (previous.generation if previous else 0) + 1)
        entries: dict[str, dict[str, Any]] = {}
        digests: dict[str, tuple[str, Path]] = {}
        for rel, path in sorted(files.items()):
            try:
                digest, size = file_sha256(path), path.stat().st_size
            except FileNotFoundError:
                result.skipped.append(rel)
                continue
            entries[rel] = {"sha256": digest, "bytes": size}
            result.total_bytes += size
            digests.setdefault(digest, (rel, path))
        if previous is None and digests:
            self._invalidate()  # a listing cached before a collection would name what is gone
            present |= {path.rsplit("/", 1)[-1] for path in self._objects()}
        for digest, (rel, path) in digests.items():
            if digest not in present:
                self._put_file(self._path(OBJECTS, digest), path)
                result.uploaded_bytes += entries[rel]["bytes"]
                result.uploaded_files += 1
        if previous is not None and previous.files == entries:
            result.generation = previous.generation
            return result
        manifest = Manifest(unit, result.generation, entries, writer, dt.datetime.now(dt.timezone.utc).isoformat())
        self._put(self._path(MANIFESTS, unit + ".json"), json.dumps(manifest.to_json(), indent=1).encode())
        return result

    def pull(self, manifest: Manifest, dest: Path) -> int:
        """The unit's files into ``dest`` (each verified against its SHA-256, then renamed
        into place). Returns the bytes written."""
        total = 0
        for rel, meta in manifest.files.items():
            target = dest / rel
            if target.is_file() and target.stat().st_size == meta["bytes"] and file_sha256(target) == meta["sha256"]:
                continue
            data = self._read(self._path(OBJECTS, meta["sha256"]))
            if data is None or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise UserError(
                    f"remote '{self.shown}' is damaged: {manifest.unit}/{rel} is "
                    f"{'missing' if data is None else 'not what its manifest says'} (SHA-256); push the study "
                    "again from where it ran, or use another remote"
                )
            with replaced_atomically(target) as tmp:
                tmp.write_bytes(data)
            total += len(data)
        return total

    def verify(self, manifests: dict[str, Manifest] | None = None) -> list[str]:
        """What is wrong with the remote (nothing: []): every manifest's files there, at
        their size (one listing of the objects, not a request per file)."""
        sizes = {path.rsplit("/", 1)[-1]: info.get("size") for path, info in self._objects().items()}
        problems = []
        for unit, m in (manifests if manifests is not None else self.manifests()).items():
            for rel, meta in m.files.items():
                if meta["sha256"] not in sizes:
                    problems.append(f"{unit}/{rel}: missing")
                    continue
                size = sizes[meta["sha256"]]
                if size is not None and int(size) != int(meta["bytes"]):
                    problems.append(f"{unit}/{rel}: {size} bytes, its manifest says {meta['bytes']}")
        return problems

    def _objects(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(self.fs.find(self._path(OBJECTS), detail=True))
        except FileNotFoundError:
            return {}

    def collect_garbage(self, older_than_s: float) -> int:
        """Remove contents no manifest names (older checkpoints, interrupted uploads),
        leaving those younger than ``older_than_s`` (another machine's upload in flight
        whose manifest is not written yet), in one request where the store takes a list
        (S3's batch delete, one Hub commit). Returns how many files went."""
        referenced = {f["sha256"] for m in self.manifests().values() for f in m.files.values()}
        now = time.time()
        garbage = [
            path
            for path, info in self._objects().items()
            if path.rsplit("/", 1)[-1] not in referenced
            and not (older_than_s > 0 and now - _mtime(info, now) < older_than_s)
        ]
        if not garbage:
            return 0
        if self.local:
            for path in garbage:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        else:
            self.fs.rm(garbage)
        self._invalidate()
        return len(garbage)

    # -- the lease: one writer per SQLite remote ------------------------------------------------
    def lease(self) -> Lease | None:
        data = self._read(self._path(LEASE))
        if data is None:
            return None
        try:
            d = json.loads(data)
            return Lease(d["holder"], d["host"], int(d["pid"]), float(d["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            return None

    def write_lease(self, lease: Lease) -> None:
        self._put(self._path(LEASE), json.dumps(lease.__dict__).encode())

    def release(self, holder: str) -> None:
        current = self.lease()
        if current is not None and current.holder == holder:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._path(LEASE))


def new_holder() -> Lease:
    host = socket.gethostname()
    return Lease(f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}", host, os.getpid(), time.time())


def _parse_manifest(unit: str, data: bytes, shown: str) -> Manifest:
    try:
        d = json.loads(data)
        files = d["files"]
        if d.get("format") != REMOTE_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {d.get('format')!r}")
        for rel, meta in files.items():
            if (
                Path(rel).is_absolute()
                or ".." in Path(rel).parts
                or not isinstance(meta.get("sha256"), str)
                or not isinstance(meta.get("bytes"), int)
            ):
                raise ValueError(f"entry {rel!r}")
        return Manifest(unit, int(d["generation"]), files, str(d.get("writer", "")), str(d.get("written", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"remote '{shown}': the manifest of {unit} is not one this tool writes ({e}); it was edited or "
            "damaged: push the study again from where it ran, or use another remote"
        ) from None


def _mtime(info: dict[str, Any], default: float) -> float:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return default


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


def _fix_for(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return (
            "check the bucket, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) and, for an S3-compatible "
            "service, AWS_ENDPOINT_URL"
        )
    if scheme in ("gs", "gcs"):
        return "check the bucket and GOOGLE_APPLICATION_CREDENTIALS"
    if scheme == "hf":
        return "check the repo id and HF_TOKEN (a token with write access; on Kaggle, from its secrets)"
    return "check the folder and its permissions"
