"""`optuna-search wheelhouse`: a folder of wheels that installs this project with no index
(a Kaggle session with the internet off, an air-gapped machine).

It holds this project's wheel, built from its source (by default the folder this install
came from, as pip recorded it), and a wheel of every distribution it needs, at the
versions installed here, for this machine's Python and platform. torch and what only
torch needs (its CUDA libraries) are left out: Kaggle's images ship torch, and its CUDA
build is gigabytes. Made in a session with the internet on, saved as a dataset, it
installs in every later session with

    pip install --no-index --find-links /kaggle/input/WHEELHOUSE optuna-search
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import unquote, urlsplit

from optuna_search.core import UserError

PROJECT = "optuna-search"
LEFT_OUT = frozenset({"torch"})
"""Shipped by the images this is for; what only they need is left out with them."""


def _key(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def needed(extras: tuple[str, ...] = ()) -> dict[str, str]:
    """Every distribution this project needs (with ``extras``), at its installed version,
    torch and what only torch needs left out: canonical name -> version."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(PROJECT, "")] + [(PROJECT, e) for e in extras]
    while todo:
        name, extra = todo.pop()
        key = _key(name)
        if key in LEFT_OUT or (key, extra) in done:
            continue
        done.add((key, extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise UserError(
                f"'{name}' is needed by optuna-search{'[' + extra + ']' if extra else ''} but not installed here; "
                f"install optuna-search{'[' + ','.join(extras) + ']' if extras else ''} first, then make the "
                "wheelhouse"
            ) from None
        if key != _key(PROJECT):
            found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if extra and req.marker is None:
                continue  # a base requirement, walked with the base
            todo += [(req.name, "")] + [(req.name, e) for e in sorted(req.extras)]
    return dict(sorted(found.items()))


def installed_from() -> str | None:
    """The folder or wheel this install was made from (pip's direct_url.json), if any."""
    try:
        text = distribution(PROJECT).read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not text:
        return None
    url = json.loads(text).get("url", "")
    parts = urlsplit(url)
    return unquote(parts.path) if parts.scheme == "file" else None


def make_wheelhouse(output: str, *, source: str | None = None, extras: tuple[str, ...] = ()) -> str:
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output '{out}' exists and is not an empty folder; give a new folder")
    src = source or installed_from()
    if src is None or not Path(src).exists():
        raise UserError(
            "where this install came from is unknown; pass --source with this project's source folder "
            "(e.g. /kaggle/input/optuna-search-src)"
        )
    pins = [f"{name}=={version}" for name, version in needed(extras).items()]
    out.mkdir(parents=True, exist_ok=True)
    _pip(["wheel", "--no-deps", "--wheel-dir", str(out), src], f"building optuna-search from '{src}'")
    _pip(["wheel", "--no-deps", "--wheel-dir", str(out), *pins], f"getting {len(pins)} wheels")
    wheels = sorted(p.name for p in out.glob("*.whl"))
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    return (
        f"wrote {len(wheels)} wheels ({size / 2**20:.0f} MiB) to {out} for Python "
        f"{sys.version_info.major}.{sys.version_info.minor} on this platform (torch left out); install with:\n"
        f"  pip install --no-index --find-links {out} optuna-search" + (f"[{','.join(extras)}]" if extras else "")
    )


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=False, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()][-3:]
        raise UserError(f"{what} failed (pip: {' / '.join(tail)[:600]}); check the network and the package index")
