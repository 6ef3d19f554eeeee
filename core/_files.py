"""File helpers shared by the layers."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from optuna_search.core._errors import UserError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


LOW_DISK_BYTES = 64 * 2**20


def disk_full(e: BaseException, folder: Path | None = None) -> bool:
    """No space left: an OSError saying so, a database that says its disk is full, or
    torch's checkpoint writer failing (its "[enforce fail at inline_container.cc]"
    RuntimeError) on a disk that is indeed nearly full."""
    text = str(e).lower()
    if (
        (isinstance(e, OSError) and e.errno == errno.ENOSPC)
        or "database or disk is full" in text
        or "no space left on device" in text
    ):
        return True
    if isinstance(e, RuntimeError) and ("inline_container" in text or "pytorchstreamwriter" in text):
        here = folder or Path(".")
        probe = next((p for p in (here, *here.parents) if p.exists()), Path("."))
        return shutil.disk_usage(probe).free < LOW_DISK_BYTES
    return False


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (unique: processes may write the same file) for
    the block to write; renamed over ``path`` when the block ends without an error, removed
    when it does not. A reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def writable(path: Path | str) -> Iterator[None]:
    """Writing ``path``: a folder that refuses it (read-only, no permission) is one line
    that names it (a UserError: exit 2), not a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(
                f"cannot write '{e.filename or path}' ({e.strerror}); give an output in a writable folder"
            ) from None
        raise
