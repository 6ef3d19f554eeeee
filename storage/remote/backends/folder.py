"""A local or mounted folder as a remote (``/mnt/nfs/study``, ``./backup``, ``file:///...``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from optuna_search.core import UserError, replaced_atomically
from optuna_search.storage.remote._store import (
    Backend,
    Batch,
    Conflict,
    Costs,
    Listed,
    Options,
    Versioned,
    commit_in_order,
    reason,
)


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
        return commit_in_order(self, batch)

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
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({reason(e)}); "
                "check the folder and its permissions"
            ) from None


def _matches(parts: SplitResult) -> bool:
    return parts.scheme in ("", "file") or len(parts.scheme) == 1  # a path (or a Windows drive)


def _open(url: str, shown: str, options: Options) -> FolderStore:
    if url.startswith("file:"):
        return FolderStore(Path(urlsplit(url).path), shown)
    return FolderStore(Path(url).expanduser(), shown)


BACKEND = Backend("folder", "a folder", _matches, _open, rank=0)
