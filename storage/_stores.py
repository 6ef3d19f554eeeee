"""Where a remote's bytes go: one small protocol (``Store``) and its backends.

Every backend offers the same few operations, each a bounded number of requests:

    read(path)                  -> Versioned | None     one request (the version: an ETag,
                                                         a content digest, a commit id)
    swap(path, data, expected)  -> new version           a conditional write: ``expected``
                                                         None = create only if absent, else
                                                         replace only that version; ``Conflict``
                                                         otherwise (one writer, by the store)
    commit(Batch)                                        objects, then manifests: a unit's
                                                         files before the manifest naming them
    download(path, dest)                                 streamed to disk, never whole in memory
    listing(prefix)             -> {path: Listed}        one listing
    delete(paths)                                        one request where the store takes a list

Backends: a folder (``FolderStore``: renames for whole files, ``flock`` for the
conditional write), fsspec object stores (``FsspecStore``: S3's ``If-None-Match`` /
``If-Match`` through s3fs), a Hugging Face Storage Bucket (``_hub.BucketStore``: one
batch call per commit; the bucket API has no precondition) and a Hugging Face dataset repo
(``_hub.RepoStore``: a commit per ``commit()``, every one conditional on the repo's head).
``open_store`` takes the URL, refuses schemes nobody meant in one line, and never shows
credentials.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from optuna_search.core import UserError, replaced_atomically

SUPPORTED = "a folder, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, hf://buckets/USER/NAME or hf://datasets/USER/REPO"


class Conflict(Exception):
    """A conditional write that found another version than the one it expected."""


class Throttled(Exception):
    """The service said: not now (HTTP 429, or a 5xx), come back after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Versioned:
    data: bytes
    version: str


@dataclass(frozen=True)
class Listed:
    size: int | None
    mtime: float | None
    md5: str | None = None
    """The store's MD5 of the contents where its listing gives one (S3's ETag of a
    single-part upload)."""


@dataclass
class Batch:
    """What one commit writes: contents (name -> local file), then small files (the
    manifests, the lease), and what it deletes. On a dataset repo it is one atomic commit."""

    objects: dict[str, Path] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    lease: tuple[str, bytes, str | None] | None = None
    """(path, data, expected version): the lease renewed in the same commit, conditionally."""
    parent: str | None = None
    """On a dataset repo without a lease in the batch: commit only on this head."""
    fence: Callable[[], object] | None = None
    """Where the store has no commits: called after the contents and before the manifests
    (it raises when the writer may no longer write them: a worker whose run lost the lease)."""
    message: str = "optuna-search"

    def __bool__(self) -> bool:
        return bool(self.objects or self.files or self.deletes or self.lease)


@dataclass
class Costs:
    """Requests and commits this store has made (what `status` and the benchmarks show)."""

    requests: int = 0
    commits: list[float] = field(default_factory=list)
    """When each commit was made (a dataset repo's; other stores' are not commits)."""


class Store(Protocol):
    shown: str
    costs: Costs
    commits_are_scarce: bool
    """True on a dataset repo: every write is a git commit, and the Hub limits them."""

    def read(self, path: str) -> Versioned | None: ...

    def swap(self, path: str, data: bytes, expected: str | None) -> str: ...

    def write(self, path: str, data: bytes) -> None: ...

    def commit(self, batch: Batch) -> str | None: ...

    def download(self, path: str, dest: Path) -> bool: ...

    def listing(self, prefix: str) -> dict[str, Listed]: ...

    def delete(self, paths: list[str]) -> None: ...

    def check(self, *, write: bool) -> None: ...

    def live_bytes(self) -> int | None: ...


def redact_remote(url: str) -> str:
    """The URL without credentials (user:password@, a token in the query or fragment), the
    rest as it was typed."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return url
    if parts.username is None and parts.password is None:
        return url.split("?", 1)[0].split("#", 1)[0]
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- a folder ---------------------------------------------------------------------------------
class FolderStore:
    """A local or mounted folder. A file is written whole or not at all (a rename); the
    conditional write holds an ``flock`` on ``.lock`` beside it (released by the kernel
    when its holder dies), so two processes that swap at the same instant are serialised:
    one finds the other's version and gets ``Conflict``."""

    commits_are_scarce = False

    def __init__(self, root: Path, shown: str) -> None:
        self.root, self.shown, self.costs = root, shown, Costs()

    def _p(self, path: str) -> Path:
        return self.root / path

    def read(self, path: str) -> Versioned | None:
        try:
            data = self._p(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return Versioned(data, hashlib.sha256(data).hexdigest())

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        lock = self._p(path).with_name(self._p(path).name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
        with self._locked(path):
            current = self.read(path)
            if (current.version if current else None) != expected:
                raise Conflict(path)
            self.write(path, data)
        return hashlib.sha256(data).hexdigest()

    def write(self, path: str, data: bytes) -> None:
        with replaced_atomically(self._p(path)) as tmp:
            tmp.write_bytes(data)

    def put_object(self, name: str, source: Path) -> None:
        if not self._p(name).exists():
            with replaced_atomically(self._p(name)) as tmp:
                shutil.copyfile(source, tmp)

    def commit(self, batch: Batch) -> str | None:
        return _commit_in_order(self, batch)

    def download(self, path: str, dest: Path) -> bool:
        try:
            with replaced_atomically(dest) as tmp:
                shutil.copyfile(self._p(path), tmp)
        except FileNotFoundError:
            return False
        return True

    def listing(self, prefix: str) -> dict[str, Listed]:
        base = self._p(prefix)
        if not base.is_dir():
            return {}
        out = {}
        for f in base.rglob("*"):
            if f.is_file() and not f.name.endswith(".lock") and ".part" not in f.name:
                st = f.stat()
                out[str(f.relative_to(self.root))] = Listed(st.st_size, st.st_mtime)
        return out

    def delete(self, paths: list[str]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._p(p))

    def check(self, *, write: bool) -> None:
        try:
            if write:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".probe-{os.getpid()}"
                probe.write_bytes(b"probe")
                probe.unlink()
            if not self.root.is_dir():
                raise FileNotFoundError(str(self.root))
        except OSError as e:
            raise UserError(
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({_reason(e)}); "
                "check the folder and its permissions"
            ) from None

    def live_bytes(self) -> int | None:
        return sum(x.size or 0 for x in self.listing("").values())


# -- fsspec object stores (S3, GCS) ------------------------------------------------------------
class FsspecStore:
    """An object store through fsspec. On S3 the conditional write is the store's own:
    ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace (HTTP 412 otherwise).
    GCS through gcsfs offers no precondition here: its lease is read-then-write (said in
    the docs)."""

    commits_are_scarce = False

    def __init__(self, url: str, shown: str, scheme: str) -> None:
        self.shown, self.scheme, self.costs = shown, scheme, Costs()
        self.fs, self.root = _filesystem(url, shown, scheme)
        self._read_options: dict[str, Any] = {"max_concurrency": 1} if scheme == "s3" else {}

    def _p(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def _count(self, n: int = 1) -> None:
        self.costs.requests += n

    def read(self, path: str) -> Versioned | None:
        self._count()
        if self.scheme == "s3":
            bucket, key, _ = self.fs.split_path(self._p(path))
            try:
                out = self.fs.call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return None
            except Exception as e:
                raise _translated(e) from None
            body = out["Body"]
            data = bytes(_sync_read(self.fs, body))
            return Versioned(data, str(out.get("ETag", "")))
        try:
            data = bytes(self.fs.cat_file(self._p(path), **self._read_options))
        except FileNotFoundError:
            return None
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
        if self.scheme != "s3":
            return swap_unguarded(self, path, data, expected)
        self._count()
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        bucket, key, _ = self.fs.split_path(self._p(path))
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as e:
            err = _translated(e)
            if isinstance(err, Conflict):
                raise err from None
            if isinstance(e, FileNotFoundError) and expected is not None:
                raise Conflict(path) from None  # If-Match on an object that is gone
            raise err from None
        return str(out.get("ETag", ""))

    def write(self, path: str, data: bytes) -> None:
        self._count()
        self.fs.pipe_file(self._p(path), data)

    def put_object(self, name: str, source: Path) -> None:
        self._count()
        self.fs.put_file(str(source), self._p(name))

    def commit(self, batch: Batch) -> str | None:
        return _commit_in_order(self, batch)

    def download(self, path: str, dest: Path) -> bool:
        self._count()
        try:
            with replaced_atomically(dest) as tmp:
                self.fs.get_file(self._p(path), str(tmp))
        except FileNotFoundError:
            return False
        return True

    def listing(self, prefix: str) -> dict[str, Listed]:
        self._count()
        with contextlib.suppress(AttributeError):
            self.fs.invalidate_cache()
        try:
            found = self.fs.find(self._p(prefix), detail=True)
        except FileNotFoundError:
            return {}
        base = self.root.rstrip("/") + "/"
        return {
            p[len(base) :]: Listed(info.get("size"), _mtime(info), _md5_of(info))
            for p, info in found.items()
            if p.startswith(base) and info.get("type", "file") != "directory"
        }

    def delete(self, paths: list[str]) -> None:
        if paths:
            self._count()
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm([self._p(p) for p in paths])

    def check(self, *, write: bool) -> None:
        try:
            with contextlib.suppress(AttributeError):
                self.fs.invalidate_cache()
            self._count()
            if self.fs.exists(self.root):
                self.fs.ls(self.root)  # a bucket that exists but refuses listing says so here
            if write:
                probe = self._p(f".probe-{os.getpid()}")
                self.write(probe[len(self.root) + 1 :], b"probe")
                self.fs.rm_file(probe)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({_reason(e)}); "
                + _fix_for(self.scheme)
            ) from None

    def live_bytes(self) -> int | None:
        return sum(x.size or 0 for x in self.listing("").values())


def swap_unguarded(store: Store, path: str, data: bytes, expected: str | None) -> str:
    """A swap where the store has no precondition: read, compare, write (a writer in
    between wins silently; the stores that use it say so). Versions are content digests."""
    current = store.read(path)
    if (current.version if current else None) != expected:
        raise Conflict(path)
    store.write(path, data)
    return hashlib.sha256(data).hexdigest()


def _commit_in_order(store: FolderStore | FsspecStore, batch: Batch) -> str | None:
    """A commit where a store has no commits: the contents, then the lease's conditional
    renewal (a run that lost it stops here, before any manifest), then the manifests,
    then the deletions. A kill between two steps leaves the previous manifests valid."""
    for name, source in batch.objects.items():
        store.put_object(name, source)
    if batch.fence is not None:
        batch.fence()
    version = store.swap(*batch.lease) if batch.lease is not None else None
    for name, data in batch.files.items():
        store.write(name, data)
    store.delete(batch.deletes)
    return version


def _sync_read(fs: Any, body: Any) -> bytes:
    """The body of a get_object answer (aiobotocore streams it: read on fsspec's loop)."""
    import fsspec.asyn

    async def read() -> bytes:
        async with body as stream:
            return bytes(await stream.read())

    return bytes(fsspec.asyn.sync(fs.loop, read))


def _translated(e: BaseException) -> BaseException:
    """An S3 error as this module names it: a failed precondition is a ``Conflict``."""
    text = str(e)
    if isinstance(e, FileExistsError):  # s3fs's name for HTTP 412 (a precondition that did not hold)
        return Conflict(text)
    code = getattr(e, "response", {}).get("Error", {}).get("Code", "") if hasattr(e, "response") else ""
    if (
        code in ("PreconditionFailed", "ConditionalRequestConflict")
        or "PreconditionFailed" in text
        or "pre-conditions" in text
    ):
        return Conflict(text)
    if "ConditionalRequestConflict" in text or "(409)" in text:
        return Conflict(text)
    return e if isinstance(e, Exception) else RuntimeError(text)


def _filesystem(url: str, shown: str, scheme: str) -> tuple[Any, str]:
    import fsspec

    options: dict[str, Any] = {"skip_instance_cache": True}
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        options["use_listings_cache"] = False
        # An endpoint that does not answer costs seconds, not minutes: the uploader retries
        # on its own schedule, and a run's end waits a bounded time.
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}[scheme]
        raise UserError(
            f"remote '{shown}' needs a file system package that is not installed ({e}); "
            f"`pip install 'optuna-search[{extra}]'`"
        ) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"remote '{shown}' is not a URL this tool can write to ({e}); give {SUPPORTED}") from None
    return fs, root.rstrip("/")


def _md5_of(info: dict[str, Any]) -> str | None:
    tag = str(info.get("ETag", "")).strip('"')
    return tag if tag and "-" not in tag else None  # "-": a multipart upload's, not an MD5


def _mtime(info: dict[str, Any]) -> float | None:
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
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


def _fix_for(scheme: str) -> str:
    if scheme == "s3":
        return (
            "check the bucket, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) and, for an S3-compatible "
            "service (a Hugging Face bucket's gateway too), AWS_ENDPOINT_URL"
        )
    if scheme in ("gs", "gcs"):
        return "check the bucket and GOOGLE_APPLICATION_CREDENTIALS"
    return "check the repo or bucket id and HF_TOKEN (a token with write access; on Kaggle, from its secrets)"
