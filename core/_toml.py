"""TOML in and out: ``tomllib`` (``tomli`` before Python 3.11) to read, ``tomli-w`` to
write (show-config and the copy stored on a study), so every config written reads back
to the same config, whatever characters it holds."""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def to_toml(config: Any) -> str:
    """A config (or its dict) as TOML."""
    import tomli_w

    return tomli_w.dumps(config if isinstance(config, dict) else config.to_dict())
