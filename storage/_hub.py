"""The Hugging Face Hub as a remote's store (``_stores.Store``), within the Hub's limits.

- ``hf://buckets/USER/NAME[/PREFIX]``: a Storage Bucket (non-versioned object storage,
  made for checkpoints). A commit is two ``batch_bucket_files`` calls: the contents,
  then the manifests and the lease (the batch API is not transactional, so a unit's
  manifest never travels in the call that carries its contents). The bucket API has no
  precondition: the lease there is read, compared, then written; two machines that take
  over the same stale lease within the same second can both believe they hold it, and
  the loser finds out at its next renewal (it then stops writing). The bucket's S3
  gateway (``s3://NAME/PREFIX`` with ``AWS_ENDPOINT_URL=https://s3.hf.co``) goes through
  the S3 backend with ``If-Match``.
- ``hf://datasets/USER/REPO[/PREFIX]``: a dataset repo. Every write is one git commit
  (``create_commit`` with all of a unit's files: atomic, a reader never sees half), and
  every commit of a SQLite study's writer is conditional on the head it last saw
  (``parent_commit``): a writer that lost the lease can never write again. The Hub
  refuses a repo's commits past 128 an hour: the uploader spends at most
  ``storage.remote_commits_per_hour`` and coalesces what waits; ``squash()`` keeps the
  repo near its live size (``super_squash_history``).

429 and 5xx answers become ``Throttled`` with the server's ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from optuna_search.core import UserError
from optuna_search.storage._stores import (
    SUPPORTED,
    Batch,
    Conflict,
    Costs,
    Listed,
    Throttled,
    Versioned,
    _reason,
    swap_unguarded,
)

REPO_TYPE = "dataset"


def hub_api() -> Any:
    """The client (``huggingface_hub.HfApi``; the token from ``HF_TOKEN`` or the login)."""
    import huggingface_hub

    return huggingface_hub.HfApi()


HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
"""A Hub user or repo name: letters, digits, '-', '_' and '.' inside (no revision: '@main')."""


def hub_store(url: str, shown: str, api: Any = None) -> BucketStore | RepoStore:
    kind, _, tail = url[len("hf://") :].partition("/")
    parts = tail.strip("/").split("/") if tail.strip("/") else []
    if kind not in ("buckets", "datasets") or len(parts) < 2:
        raise UserError(
            f"remote '{shown}' is not a Hub bucket or dataset repo; give hf://buckets/USER/NAME (recommended: "
            f"made for checkpoints) or hf://datasets/USER/REPO (every write a commit). Any remote: {SUPPORTED}"
        )
    bad = [p for p in parts[:2] if not HUB_NAME.fullmatch(p) or "--" in p or ".." in p]
    if bad:
        revision = " (a revision such as '@main' is no part of a remote: it writes the default branch)"
        raise UserError(
            f"remote '{shown}': {bad[0]!r} is not a Hub user or repo name (letters, digits, '-', '_', '.')"
            + (revision if "@" in bad[0] else "")
        )
    if "" in parts[2:]:
        raise UserError(f"remote '{shown}' has an empty folder ('//') in its prefix; give hf://{kind}/USER/NAME/PREFIX")
    repo_id, prefix = "/".join(parts[:2]), "/".join(parts[2:])
    if kind == "buckets":
        return BucketStore(repo_id, prefix, shown, api)
    return RepoStore(repo_id, prefix, shown, api)


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(e: BaseException, default: float = 60.0) -> float:
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        return max(1.0, float(headers.get("Retry-After", default)))
    except (TypeError, ValueError):
        return default


def _translate(e: BaseException, what: str) -> BaseException:
    status = _status(e)
    if status == 429 or (status is not None and status >= 500):
        return Throttled(f"{what}: HTTP {status} ({_reason(e)})", _retry_after(e))
    if status in (409, 412):
        return Conflict(f"{what}: HTTP {status}")
    return e


class _HubStore:
    shown: str
    commits_are_scarce = False
    # What each kind of Hub store does its own way (a bucket's batch call, a repo's commit):
    download: Callable[[str, Path], bool]
    commit: Callable[[Batch], str | None]
    listing: Callable[[str], dict[str, Listed]]

    def __init__(self, repo_id: str, prefix: str, shown: str, api: Any = None) -> None:
        self.repo_id, self.prefix, self.shown = repo_id, prefix, shown
        self.api = api if api is not None else hub_api()
        self.costs = Costs()

    def _p(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix and path else (self.prefix or path)

    def _rel(self, path: str) -> str:
        return path[len(self.prefix) + 1 :] if self.prefix else path

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.costs.requests += 1
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _translate(e, what) from None

    def read(self, path: str) -> Versioned | None:
        with tempfile.TemporaryDirectory(prefix="optuna-search-hub-") as tmp:
            target = Path(tmp) / "file"
            if not self.download(path, target):
                return None
            data = target.read_bytes()
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def write(self, path: str, data: bytes) -> None:
        self.commit(Batch(files={path: data}))

    def live_bytes(self) -> int | None:
        return sum(x.size or 0 for x in self.listing("").values())

    def check(self, *, write: bool) -> None:
        endpoint = getattr(self.api, "endpoint", None)
        unreachable = _unreachable(endpoint) if isinstance(endpoint, str) else None
        if unreachable is not None:
            raise UserError(
                f"remote '{self.shown}' cannot be reached: could not connect to {endpoint} ({unreachable}); check "
                "the network (on Kaggle: Settings > Internet on) or HF_ENDPOINT"
            )
        try:
            self.listing("")
        except Exception as e:
            raise UserError(
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({_reason(e)}); check the "
                "repo or bucket id (create it first: `hf buckets create NAME --private` or `hf repos create NAME "
                "--repo-type dataset --private`) and HF_TOKEN (a token with write access; on Kaggle, from its secrets)"
            ) from None


class BucketStore(_HubStore):
    """A Hugging Face Storage Bucket (see the module docstring)."""

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
        return swap_unguarded(self, path, data, expected)

    def commit(self, batch: Batch) -> str | None:
        if batch.objects:
            add: list[tuple[str | Path | bytes, str]] = [(str(p), self._p(n)) for n, p in batch.objects.items()]
            self._call("upload to the bucket", self.api.batch_bucket_files, self.repo_id, add=add)
        if batch.fence is not None:
            batch.fence()
        version = None
        if batch.lease is not None:
            version = self.swap(*batch.lease)
        small: list[tuple[str | Path | bytes, str]] = [(d, self._p(n)) for n, d in batch.files.items()]
        if small or batch.deletes:
            self._call(
                "write the bucket's manifests",
                self.api.batch_bucket_files,
                self.repo_id,
                add=small or None,
                delete=[self._p(p) for p in batch.deletes] or None,
            )
        return version

    def download(self, path: str, dest: Path) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            self._call(
                "download from the bucket",
                self.api.download_bucket_files,
                self.repo_id,
                files=[(self._p(path), str(part))],
                raise_on_missing_files=False,
            )
            if not part.exists():
                return False
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        return True

    def listing(self, prefix: str) -> dict[str, Listed]:
        items = self._call(
            "list the bucket",
            lambda: list(self.api.list_bucket_tree(self.repo_id, self._p(prefix) or None, recursive=True)),
        )
        return {
            self._rel(i.path): Listed(getattr(i, "size", None), _seconds(getattr(i, "mtime", None)))
            for i in items
            if getattr(i, "type", "file") == "file"
        }

    def delete(self, paths: list[str]) -> None:
        if paths:
            self._call(
                "delete from the bucket", self.api.batch_bucket_files, self.repo_id, delete=[self._p(p) for p in paths]
            )


class RepoStore(_HubStore):
    """A Hugging Face dataset repo (see the module docstring)."""

    commits_are_scarce = True

    def head(self) -> str:
        info = self._call("read the repo", self.api.repo_info, self.repo_id, repo_type=REPO_TYPE)
        return str(info.sha)

    def read(self, path: str) -> Versioned | None:
        """The file at the repo's head; its version is that head (a conditional write
        replaces it only if nothing was committed since)."""
        head = self.head()
        with tempfile.TemporaryDirectory(prefix="optuna-search-hub-") as tmp:
            target = Path(tmp) / "file"
            if not self._download_at(path, target, head):
                return None
            return Versioned(target.read_bytes(), head)

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
        if expected is None:
            head = self.head()
            found = self._call(
                "read the repo",
                self.api.get_paths_info,
                self.repo_id,
                [self._p(path)],
                revision=head,
                repo_type=REPO_TYPE,
            )
            if found:
                raise Conflict(path)
            expected = head
        return self._commit([self._add(path, data)], f"optuna-search: {path}", expected)

    def commit(self, batch: Batch) -> str | None:
        from huggingface_hub import CommitOperationDelete

        ops: list[Any] = [self._add(n, str(p)) for n, p in batch.objects.items()]
        ops += [self._add(n, d) for n, d in batch.files.items()]
        ops += [CommitOperationDelete(path_in_repo=self._p(p)) for p in batch.deletes]
        parent = batch.parent
        if batch.lease is not None:
            path, data, parent = batch.lease
            ops.append(self._add(path, data))
        if not ops:
            return parent
        return self._commit(ops, batch.message, parent)

    def _add(self, path: str, source: str | bytes) -> Any:
        from huggingface_hub import CommitOperationAdd

        return CommitOperationAdd(path_in_repo=self._p(path), path_or_fileobj=source)

    def _commit(self, ops: list[Any], message: str, parent: str | None) -> str:
        info = self._call(
            "commit to the repo",
            self.api.create_commit,
            self.repo_id,
            ops,
            commit_message=message,
            repo_type=REPO_TYPE,
            parent_commit=parent,
        )
        self.costs.commits.append(_now(self.api))
        return str(info.oid)

    def squash(self) -> str:
        """The repo's history squashed into one commit (its size back near its live
        files). Returns the new head."""
        self._call("squash the repo's history", self.api.super_squash_history, self.repo_id, repo_type=REPO_TYPE)
        self.costs.commits.append(_now(self.api))
        return self.head()

    def download(self, path: str, dest: Path) -> bool:
        return self._download_at(path, dest, None)

    def _download_at(self, path: str, dest: Path, revision: str | None) -> bool:
        from huggingface_hub.errors import EntryNotFoundError

        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".hub-", dir=dest.parent) as tmp:
            try:
                got = self._call(
                    "download from the repo",
                    self.api.hf_hub_download,
                    self.repo_id,
                    self._p(path),
                    repo_type=REPO_TYPE,
                    revision=revision,
                    local_dir=tmp,
                )
            except EntryNotFoundError:
                return False
            except Exception as e:
                if _status(e) == 404:
                    return False
                raise
            shutil.move(got, dest)  # a rename (the temporary folder is beside dest)
        return True

    def listing(self, prefix: str) -> dict[str, Listed]:
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return self._list(prefix)
        except EntryNotFoundError:
            return {}  # a folder nothing was written to yet

    def _list(self, prefix: str) -> dict[str, Listed]:
        items = self._call(
            "list the repo",
            lambda: list(
                self.api.list_repo_tree(self.repo_id, self._p(prefix) or None, recursive=True, repo_type=REPO_TYPE)
            ),
        )
        return {self._rel(i.path): Listed(getattr(i, "size", None), None) for i in items if hasattr(i, "size")}

    def delete(self, paths: list[str]) -> None:
        if paths:
            self.commit(Batch(deletes=paths, message="optuna-search: collect unused contents"))


def _unreachable(endpoint: str, timeout_s: float = 5.0) -> str | None:
    """Why the Hub's endpoint cannot be connected to (None: it can, or a proxy is in the
    way and the client's own try must tell). One connection, a few seconds at most: the
    client's retries on a machine without network take half a minute to say the same."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        return _reason(e)
    return None


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    ts = getattr(value, "timestamp", None)
    return float(ts()) if callable(ts) else None


def _now(api: Any) -> float:
    clock = getattr(api, "clock", None)
    return float(clock()) if callable(clock) else time.time()
