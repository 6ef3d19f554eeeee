"""Google Cloud Storage (``gs://BUCKET/PREFIX``), through gcsfs. gcsfs offers no
generation precondition here, so the lease is read, compared, then written: two machines
that take over the same stale lease at the same instant can both start, and the loser
stops at its next renewal (said in the docs)."""

from __future__ import annotations

from urllib.parse import urlsplit

from optuna_search.core import UserError
from optuna_search.storage.remote._fsspec import FsspecStore
from optuna_search.storage.remote._store import Backend, Options, swap_unguarded


class GcsStore(FsspecStore):
    scheme = "gs"
    extra = "gcs"
    fix = "check the bucket and GOOGLE_APPLICATION_CREDENTIALS"

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
        return swap_unguarded(self, path, data, expected)


def _open(url: str, shown: str, options: Options) -> GcsStore:
    if not urlsplit(url).netloc:
        raise UserError(f"remote '{shown}' names no bucket; give gs://BUCKET/PREFIX")
    return GcsStore(url, shown)


BACKEND = Backend("GCS", "gs://BUCKET/PREFIX", lambda parts: parts.scheme in ("gs", "gcs"), _open, extra="gcs", rank=2)
