"""Where a remote's bytes go: one small protocol (``Store``), what every backend shares,
and the record a backend registers itself with (``Backend``).

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

The backends are the modules of ``backends/``, one each (a folder, S3, GCS, a Hugging Face
Storage Bucket, a Hugging Face dataset repo); ``_open.open_store`` finds them there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import SplitResult


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


@dataclass(frozen=True)
class Options:
    """What a store is opened with besides its URL: the Hugging Face client (None: the
    library's with HF_TOKEN, or ``use_hub_client``'s; the tests and the Hub budget's
    benchmark pass a simulated Hub, which keeps its own clock)."""

    hub: Any = None


@dataclass(frozen=True)
class Backend:
    """A remote backend, as its module in ``backends/`` registers it (``BACKEND``)."""

    name: str
    example: str
    """The address as help texts show it, e.g. s3://BUCKET/PREFIX."""
    matches: Callable[[SplitResult], bool]
    open: Callable[[str, str, Options], Store]
    """(url, the url as shown, options) -> the store, or one line (UserError) naming what is wrong."""
    extra: str = ""
    """The pip extra it needs (``optuna-search[s3]``), if any."""
    rank: int = 9
    """Its place where the backends are listed (help texts)."""


def swap_unguarded(store: Store, path: str, data: bytes, expected: str | None) -> str:
    """A swap where the store has no precondition: read, compare, write (a writer in
    between wins silently; the stores that use it say so). Versions are content digests."""
    current = store.read(path)
    if (current.version if current else None) != expected:
        raise Conflict(path)
    store.write(path, data)
    return hashlib.sha256(data).hexdigest()


def commit_in_order(store: Any, batch: Batch) -> str | None:
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


def reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]
