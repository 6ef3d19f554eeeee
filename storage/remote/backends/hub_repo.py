"""A Hugging Face dataset repo (``hf://datasets/USER/REPO[/PREFIX]``). Every write is one
git commit (``create_commit`` with all of a unit's files: atomic, a reader never sees
half), and every commit of a SQLite study's writer is conditional on the head it last saw
(``parent_commit``): a writer that lost the lease can never write again. The Hub refuses
a repo's commits past 128 an hour: the uploader spends at most
``storage.remote_commits_per_hour`` and coalesces what waits; ``squash()`` keeps the repo
near its live size (``super_squash_history``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from optuna_search.storage.remote._hub import HubStore, hub_address, is_hub, status_of
from optuna_search.storage.remote._store import Backend, Batch, Conflict, Listed, Options, Versioned

REPO_TYPE = "dataset"


class RepoStore(HubStore):
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
        return str(info.oid)

    def squash(self) -> str:
        """The repo's history squashed into one commit (its size back near its live
        files). Returns the new head."""
        self._call("squash the repo's history", self.api.super_squash_history, self.repo_id, repo_type=REPO_TYPE)
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
                if status_of(e) == 404:
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


def _open(url: str, shown: str, options: Options) -> RepoStore:
    repo_id, prefix = hub_address(url, shown, "dataset")
    return RepoStore(repo_id, prefix, shown, options)


BACKEND = Backend("Hub dataset repo", "hf://datasets/USER/REPO", is_hub("dataset"), _open, rank=4)
