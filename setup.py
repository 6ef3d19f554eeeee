"""The wheel's layout, discovered from the tree (pyproject.toml holds everything else).

The user fixed the top-level folders; each installs under one namespace, ``optuna_search``
(nothing claims a top-level ``search`` or ``storage`` in site-packages), and the Python API
in ``search/api`` installs as ``optuna_search`` itself. Every folder with an ``__init__.py``
under those roots is a package of the wheel: a new sub-package needs no list kept by hand
(tests/test_install.py builds the wheel and runs the CLI from it).

A build other than an editable install writes nothing into the source folder: its
``build/`` and ``*.egg-info`` go to a temporary folder, so ``pip install`` of a read-only
folder (Kaggle's ``/kaggle/input``) works.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import setup

ROOTS = {
    "optuna_search.core": "core",
    "optuna_search.storage": "storage",
    "optuna_search.objectives": "objectives",
    "optuna_search.dashboards": "dashboards",
    "optuna_search.search": "search",
}
API = ("optuna_search", "search/api")
HERE = Path(__file__).resolve().parent


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [API[0]], {API[0]: API[1]}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for init in sorted((HERE / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE)
            if rel.as_posix() == API[1] or "__pycache__" in rel.parts:
                continue  # the API is the namespace's own package (above)
            sub = rel.relative_to(folder).parts
            packages.append(".".join((name, *sub)))
    return packages, package_dir


def _out_of_tree() -> dict[str, dict[str, str]]:
    """Where setuptools writes while it builds: a temporary folder, except for an editable
    install (whose metadata belongs beside the checkout it points to)."""
    if any(arg.startswith("editable") for arg in sys.argv):
        return {}
    scratch = tempfile.mkdtemp(prefix="optuna-search-build-")
    atexit.register(shutil.rmtree, scratch, True)
    return {"egg_info": {"egg_base": scratch}, "build": {"build_base": str(Path(scratch) / "build")}}


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"optuna_search.search.presets": ["*.toml"]},
    options=_out_of_tree(),
)
