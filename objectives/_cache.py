"""Where optuna-search keeps what it builds once: the demo's data and model, and models
converted from GGUF."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """``$OPTUNA_SEARCH_CACHE``, default ``~/.cache/optuna-search``."""
    return Path(os.environ.get("OPTUNA_SEARCH_CACHE") or Path.home() / ".cache" / "optuna-search")


def new_build_dir(root: Path) -> Path:
    """A fresh temporary folder beside ``root`` to build into (then :func:`publish`)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root.parent))


def publish(tmp: Path, root: Path) -> None:
    """Rename a finished build into place, atomically: a killed build never leaves a
    half-written folder behind. Another process may have finished the same build first:
    theirs is identical, so ours is dropped."""
    tmp.chmod(0o755)  # mkdtemp made it private; a cache is shared like any other install
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
