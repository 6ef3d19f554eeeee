"""What a Hugging Face Storage Bucket and a dataset repo share as remotes: the client
(``huggingface_hub.HfApi``, or one given: ``use_hub_client``, an ``Options.hub``), the
parsing of ``hf://KIND/USER/NAME[/PREFIX]``, the Hub's answers as this project names them
(429 and 5xx become ``Throttled`` with the server's ``Retry-After``; 409 and 412 a
``Conflict``), and a quick word when the endpoint cannot be reached at all."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from optuna_search.core import UserError
from optuna_search.storage.remote._store import Batch, Conflict, Costs, Listed, Options, Throttled, Versioned, reason

HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
"""A Hub user or repo name: letters, digits, '-', '_' and '.' inside (no revision: '@main')."""
_client: list[Callable[[], Any]] = []


def use_hub_client(factory: Callable[[], Any] | None) -> None:
    """Every hf:// remote this process opens from now on talks to ``factory()`` instead of
    ``huggingface_hub.HfApi()`` (a proxy, a mirror, the tests' simulated Hub); None: the
    library's again."""
    _client[:] = [factory] if factory is not None else []


def hub_client() -> Any:
    if _client:
        return _client[0]()
    import huggingface_hub

    return huggingface_hub.HfApi()


def hub_address(url: str, shown: str, kind: str) -> tuple[str, str]:
    """(USER/NAME, PREFIX) of ``hf://KIND/USER/NAME[/PREFIX]``, or one line naming what is
    wrong with it."""
    _, _, tail = url[len("hf://") :].partition("/")
    parts = tail.strip("/").split("/") if tail.strip("/") else []
    if len(parts) < 2:
        raise UserError(f"remote '{shown}' names no {kind}; give hf://{kind}s/USER/NAME")
    bad = [p for p in parts[:2] if not HUB_NAME.fullmatch(p) or "--" in p or ".." in p]
    if bad:
        revision = " (a revision such as '@main' is no part of a remote: it writes the default branch)"
        raise UserError(
            f"remote '{shown}': {bad[0]!r} is not a Hub user or repo name (letters, digits, '-', '_', '.')"
            + (revision if "@" in bad[0] else "")
        )
    if "" in parts[2:]:
        raise UserError(
            f"remote '{shown}' has an empty folder ('//') in its prefix; give hf://{kind}s/USER/NAME/PREFIX"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def is_hub(kind: str) -> Callable[[Any], bool]:
    """A backend's ``matches``: hf://KINDs/..."""
    return lambda parts: parts.scheme == "hf" and parts.netloc == f"{kind}s"


def status_of(e: BaseException) -> int | None:
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
    status = status_of(e)
    if status == 429 or (status is not None and status >= 500):
        return Throttled(f"{what}: HTTP {status} ({reason(e)})", _retry_after(e))
    if status in (409, 412):
        return Conflict(f"{what}: HTTP {status}")
    return e


class HubStore:
    shown: str
    commits_are_scarce = False
    # What each kind of Hub store does its own way (a bucket's batch call, a repo's commit):
    download: Callable[[str, Path], bool]
    commit: Callable[[Batch], str | None]
    listing: Callable[[str], dict[str, Listed]]

    def __init__(self, repo_id: str, prefix: str, shown: str, options: Options) -> None:
        self.repo_id, self.prefix, self.shown = repo_id, prefix, shown
        self.api = options.hub if options.hub is not None else hub_client()
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
                f"remote '{self.shown}' cannot be {'written' if write else 'read'} ({reason(e)}); check the "
                "repo or bucket id (create it first: `hf buckets create NAME --private` or `hf repos create NAME "
                "--repo-type dataset --private`) and HF_TOKEN (a token with write access; on Kaggle, from its secrets)"
            ) from None


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
        return reason(e)
    return None


def seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    ts = getattr(value, "timestamp", None)
    return float(ts()) if callable(ts) else None
