"""What S3 and GCS share: an object store reached through fsspec (s3fs, gcsfs). A
backend adds its own conditional write (``swap``) and what to check when it is refused."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

from optuna_search.core import UserError, replaced_atomically
from optuna_search.storage.remote._store import Batch, Costs, Listed, Versioned, commit_in_order, reason


class FsspecStore:
    """An object store through fsspec; ``swap`` is the backend's (see ``backends/``)."""

    commits_are_scarce = False
    scheme = ""
    fix = ""
    """What to check when the store refuses (its credentials, its endpoint)."""
    extra = ""
    """The pip extra whose file system package it needs."""

    def __init__(self, url: str, shown: str, options: dict[str, Any] | None = None) -> None:
        self.shown, self.costs = shown, Costs()
        self.fs, self.root = filesystem(url, shown, self.extra, options or {})

    def _p(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def _count(self, n: int = 1) -> None:
        self.costs.requests += n

    def read(self, path: str) -> Versioned | None:
        self._count()
        try:
            data = bytes(self.fs.cat_file(self._p(path)))
        except FileNotFoundError:
            return None
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
        raise NotImplementedError  # every backend has its own (backends/)

    def write(self, path: str, data: bytes) -> None:
        self._count()
        self.fs.pipe_file(self._p(path), data)

    def put_object(self, name: str, source: Path) -> None:
        self._count()
        self.fs.put_file(str(source), self._p(name))

    def commit(self, batch: Batch) -> str | None:
        return commit_in_order(self, batch)

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
            p[len(base) :]: Listed(info.get("size"), _mtime(info), md5_of(info))
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
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({reason(e)}); {self.fix}"
            ) from None


def filesystem(url: str, shown: str, extra: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec file system and root of ``url``; one line when its package is missing."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except ImportError as e:
        raise UserError(
            f"remote '{shown}' needs a file system package that is not installed ({e}); "
            f"`pip install 'optuna-search[{extra}]'`"
        ) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"remote '{shown}' is not a URL this tool can write to ({e})") from None
    return fs, root.rstrip("/")


def md5_of(info: dict[str, Any]) -> str | None:
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
