"""The user's seat for the tests: a clean checkout as a read-only folder (Kaggle's
``/kaggle/input``), fresh virtual environments that cannot see the source tree, and a
machine image's preinstalled packages (Kaggle ships torch, transformers, ...) as a layer
those environments see, the way an image's site-packages are seen.

Nothing here installs into the suite's own environment."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def clean_checkout(dest: Path) -> Path:
    """The files a clean checkout of this tree has (tracked, and untracked ones git does
    not ignore: what the next commit holds), copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    dest.mkdir(parents=True)
    for rel in filter(None, listed):
        src = REPO / os.fsdecode(rel)
        if src.is_file():  # a file deleted in the work tree but still tracked is not there
            target = dest / os.fsdecode(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
    return dest


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too) -> its contents' SHA-256 ('dir' for a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@cache
def can_mount_read_only() -> bool:
    """Whether this machine lets a test see a folder read-only through a bind mount in a
    mount namespace of its own (root with CAP_SYS_ADMIN; nothing outside it sees it)."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"optuna-search-ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(
            read_only(["sh", "-c", f"touch {shlex.quote(str(probe / 'x'))}"], [probe]), capture_output=True, text=True
        )
        return proc.returncode != 0 and "Read-only" in proc.stderr
    except OSError:
        return False
    finally:
        (probe / "x").unlink(missing_ok=True)
        probe.rmdir()


def read_only(argv: list[str], paths: list[Path]) -> list[str]:
    """``argv`` run where each of ``paths`` is mounted read-only (Kaggle's /kaggle/input)."""
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))} && mount -o remount,bind,ro {shlex.quote(str(p))}"
        for p in paths
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv]


def needs(root: str, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """``root`` and every distribution it needs, as installed in the suite's environment
    (canonical names); those in ``skip`` and what only they need are left out."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [root]
    while todo:
        name = str(canonicalize_name(todo.pop()))
        if name in seen or name in skip:
            continue
        seen.add(name)
        for line in distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(seen)


def image_layer(dest: Path, names: list[str]) -> Path:
    """A machine image's preinstalled packages: each distribution's top-level files,
    linked from the suite's environment into ``dest`` (nothing is copied or installed).
    Name it ``.../site-packages``, as an image's is: libraries tell installed modules from
    a user's own by that (dill pickles a module outside one by value, and pyarrow's
    types then fail to pickle)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            src = base / top
            if top.endswith(".pth") or top in ("..", "__pycache__") or not src.exists():
                continue
            link = dest / top
            if not link.exists():
                link.symlink_to(src)
    return dest


def fresh_venv(path: Path, image: Path | None = None) -> Path:
    """A new virtual environment (no access to the source tree or the suite's packages);
    with ``image``, that layer's packages are preinstalled, as an image's are."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    if image is not None:
        (site,) = (path / "lib").glob("python*/site-packages")
        # The venv's own setuptools (Python < 3.12 adds one) would shadow the image's, as
        # an image has one setuptools: the image's is the one seen.
        for p in [*site.glob("setuptools*"), *site.glob("_distutils_hack"), *site.glob("distutils-precedence.pth")]:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        (site / "machine-image.pth").write_text(f"{image}\n")
    return path / "bin"


def user_env(bin_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's fresh session: the venv first on PATH, a new HOME and
    empty caches, nothing of the suite's Python path or test hooks."""
    home.mkdir(parents=True, exist_ok=True)
    keep = {
        k: v
        for k, v in os.environ.items()
        if k in ("LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS", "PIP_CONFIG_FILE", "PIP_CERT", "PIP_INDEX_URL")
        or k.startswith("PIP_")
    }
    return {
        **keep,
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PIP_CACHE_DIR": str(home / ".cache" / "pip"),
        "HF_HOME": str(home / ".cache" / "huggingface"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **extra,
    }
