"""S3 and S3-compatible services (``s3://BUCKET/PREFIX``; a Hugging Face bucket's S3 gateway
with ``AWS_ENDPOINT_URL=https://s3.hf.co``), through s3fs. The conditional write is S3's
own: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace (HTTP 412 otherwise),
so of two machines that take the same stale lease exactly one wins."""

from __future__ import annotations

import os
from typing import Any

from optuna_search.core import UserError
from optuna_search.storage.remote._fsspec import FsspecStore
from optuna_search.storage.remote._store import Backend, Conflict, Options, Versioned


class S3Store(FsspecStore):
    scheme = "s3"
    extra = "s3"
    fix = (
        "check the bucket, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) and, for an S3-compatible "
        "service (a Hugging Face bucket's gateway too), AWS_ENDPOINT_URL"
    )

    def read(self, path: str) -> Versioned | None:
        self._count()
        bucket, key, _ = self.fs.split_path(self._p(path))
        try:
            out = self.fs.call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        except Exception as e:
            raise _translated(e) from None
        data = bytes(_sync_read(self.fs, out["Body"]))
        return Versioned(data, str(out.get("ETag", "")))

    def swap(self, path: str, data: bytes, expected: str | None) -> str:
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


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    # An endpoint that does not answer costs seconds, not minutes: the uploader retries
    # on its own schedule, and a run's end waits a bounded time.
    options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}
    return options


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


def _open(url: str, shown: str, options: Options) -> S3Store:
    from urllib.parse import urlsplit

    if not urlsplit(url).netloc:
        raise UserError(f"remote '{shown}' names no bucket; give s3://BUCKET/PREFIX")
    return S3Store(url, shown, _options())


BACKEND = Backend("S3", "s3://BUCKET/PREFIX", lambda parts: parts.scheme == "s3", _open, extra="s3", rank=1)
