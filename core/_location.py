"""Where a study lives: its database, its files and its remote, as they travel between
the commands, the remote's cache and the API (``StudyLocation``); and a remote's address
as it may be shown (``redact_remote``: never its credentials)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

FIELDS = {
    "storage.url": "storage_url",
    "study.name": "study_name",
    "train.output_dir": "checkpoints_dir",
    "storage.artifacts": "artifacts_dir",
    "storage.remote": "remote",
}
"""A location's fields and the configuration keys they are (``LOCATION_KEYS``)."""


@dataclass(frozen=True)
class StudyLocation:
    """Where a study and its files live, never what it means. A field left None is read
    from the study's own stored config (or the defaults) where the study is opened."""

    storage_url: str | None = None
    study_name: str | None = None
    checkpoints_dir: str | None = None
    """``train.output_dir``: the folder of its points' checkpoints."""
    artifacts_dir: str | None = None
    """``storage.artifacts``: its prediction artifacts."""
    remote: str | None = None
    """``storage.remote``: its remote copy."""

    @classmethod
    def of(cls, keys: Mapping[str, str]) -> StudyLocation:
        """From configuration keys (``{"storage.url": ..., "study.name": ...}``)."""
        unknown = set(keys) - set(FIELDS)
        if unknown:
            raise ValueError(f"not location keys: {sorted(unknown)}")
        return cls(**{FIELDS[k]: v for k, v in keys.items()})

    def keys(self) -> dict[str, str]:
        """The fields set, as the configuration keys they are."""
        return {k: getattr(self, f) for k, f in FIELDS.items() if getattr(self, f) is not None}

    def replace(self, **changes: str | None) -> StudyLocation:
        return dataclasses.replace(self, **changes)


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
