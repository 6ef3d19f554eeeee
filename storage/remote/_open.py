"""From a remote URL to its store: the backends are the modules of ``backends/`` (each
registers a ``BACKEND``: its name, the address it takes, whether a URL is its own, how to
open it), found there, so a backend of its own is one module. ``open_store`` takes the
URL, refuses addresses nobody meant in one line (a mistyped scheme, credentials, a query,
'.' or '..', a scheme no backend takes), and never shows credentials."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from urllib.parse import urlsplit

from optuna_search.core import UserError, redact_remote
from optuna_search.storage.remote import backends
from optuna_search.storage.remote._store import Backend, Options, Store


@cache
def known_backends() -> tuple[Backend, ...]:
    """Every backend of ``backends/``, in their ranks' order."""
    found = [
        importlib.import_module(f"{backends.__name__}.{m.name}").BACKEND
        for m in pkgutil.iter_modules(backends.__path__)
        if not m.name.startswith("_")
    ]
    return tuple(sorted(found, key=lambda b: (b.rank, b.name)))


def supported() -> str:
    """The addresses a remote can have, for help texts and refusals."""
    examples = [b.example for b in known_backends()]
    return ", ".join(examples[:-1]) + " or " + examples[-1]


def open_store(url: str, options: Options | None = None) -> Store:
    """The store behind a remote URL, or one line naming what is wrong with it."""
    shown = redact_remote(url)
    if not url.strip():
        raise UserError(f"remote '' is empty; give {supported()}")
    parts = urlsplit(url)
    scheme = parts.scheme if len(parts.scheme) > 1 else ""
    if not scheme and (":/" in url or url.startswith(("s3:", "gs:", "hf:"))):
        raise UserError(f"remote '{shown}' looks like a URL with a mistyped scheme; give {supported()}")
    if scheme and scheme != "file":
        if parts.username or parts.password:
            raise UserError(
                f"remote '{shown}' holds credentials in the URL; put them in the environment instead "
                "(HF_TOKEN, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)"
            )
        _check_address(url, shown, bool(parts.query or parts.fragment) or "?" in url or "#" in url)
    for backend in known_backends():
        if backend.matches(parts):
            return backend.open(url, shown, options or Options())
    if scheme == "hf":
        raise UserError(
            f"remote '{shown}' is not a Hub bucket or dataset repo; give hf://buckets/USER/NAME (recommended: "
            f"made for checkpoints) or hf://datasets/USER/REPO (every write a commit). Any remote: {supported()}"
        )
    raise UserError(f"remote '{shown}': the scheme '{scheme}://' is not one this tool writes to; give {supported()}")


def _check_address(url: str, shown: str, has_query: bool) -> None:
    """A remote URL is an address and nothing else: no query or fragment (a token there
    would travel as part of a name), no space, no '.' or '..' between its slashes."""
    if has_query:
        raise UserError(
            f"remote '{shown}' has a query or fragment ('?...' or '#...'), which is no part of a remote's address "
            "(a token there would be sent as part of a name); put credentials in the environment (HF_TOKEN, "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and give the address alone"
        )
    if any(c.isspace() for c in url):
        raise UserError(f"remote '{shown}' has a space in it; bucket, repo and prefix names have none")
    segments = urlsplit(url).path.split("/")
    if any(seg in (".", "..") for seg in segments):
        raise UserError(
            f"remote '{shown}' has '.' or '..' between its slashes; a remote's prefix is a plain path "
            "(e.g. hf://buckets/USER/NAME/study-1)"
        )
