"""A Hugging Face Storage Bucket (``hf://buckets/USER/NAME[/PREFIX]``): non-versioned
object storage, made for checkpoints. A commit is two ``batch_bucket_files`` calls: the
contents, then the manifests and the lease (the batch API is not transactional, so a
unit's manifest never travels in the call that carries its contents). The bucket API has
no precondition: the lease there is read, compared, then written; two machines that take
over the same stale lease within the same second can both believe they hold it, and the
loser finds out at its next renewal (it then stops writing). The bucket's S3 gateway
(``s3://NAME/PREFIX`` with ``AWS_ENDPOINT_URL=https://s3.hf.co``) goes through the S3
backend with ``If-Match``."""

from __future__ import annotations

import os
from pathlib import Path

from optuna_search.storage.remote._hub import HubStore, hub_address, is_hub, seconds
from optuna_search.storage.remote._store import Backend, Batch, Listed, Options, swap_unguarded


class BucketStore(HubStore):
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
            self._rel(i.path): Listed(getattr(i, "size", None), seconds(getattr(i, "mtime", None)))
            for i in items
            if getattr(i, "type", "file") == "file"
        }

    def delete(self, paths: list[str]) -> None:
        if paths:
            self._call(
                "delete from the bucket", self.api.batch_bucket_files, self.repo_id, delete=[self._p(p) for p in paths]
            )


def _open(url: str, shown: str, options: Options) -> BucketStore:
    repo_id, prefix = hub_address(url, shown, "bucket")
    return BucketStore(repo_id, prefix, shown, options)


BACKEND = Backend("Hub bucket", "hf://buckets/USER/NAME", is_hub("bucket"), _open, rank=3)
