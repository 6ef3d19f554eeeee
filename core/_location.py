"""Where a study lives: its database, its files and its remote, as they travel between
the commands, the remote's cache and the API (``StudyLocation``); and a remote's address
as it may be shown (``redact_remote``: never its credentials)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_remote(url: str) -> str:
    """The URL without credentials (user:password@, a token in the query or fragment), the
    rest as it was typed."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return url
    if parts.username is None and parts.password is None:
        return url.split("?", 1)[0].split("#", 1)[0]
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
