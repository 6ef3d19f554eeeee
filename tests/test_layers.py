"""The package's layers have one direction (README, Development):

    core  <-  storage  <-  objectives  <-  dashboards  <-  search

core is the base every folder may import; storage imports nothing from search/ or
objectives/; objectives/ imports no Optuna and nothing from search/; dashboards/ reads
studies and records and never trains; search/ orchestrates (search/api is the Python
API, installed as ``optuna_search``). Project modules are imported at the top of files;
heavy libraries only inside functions (``--help`` imports none), except in the two
modules whose classes subclass theirs, which are themselves imported only inside the
functions that need them.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

FOLDERS = ("core", "storage", "objectives", "dashboards", "search")
ALLOWED = {
    "core": set(),
    "storage": {"core"},
    "objectives": {"core", "storage"},
    "dashboards": {"core", "storage", "objectives"},
    "search": {"core", "storage", "objectives", "dashboards"},
}
# dashboards/ may use objectives' maths (metrics, statistics, ensembles), never training.
DASHBOARD_OBJECTIVES = {"_metrics", "_stats", "_ensemble", "_data"}
HEAVY = (
    "torch",
    "transformers",
    "peft",
    "optuna",
    "optuna_dashboard",
    "plotly",
    "sklearn",
    "scipy",
    "datasets",
    "bitsandbytes",
    "accelerate",
    "sqlalchemy",
)
HEAVY_MODULES = {"optuna_search.objectives._trainer", "optuna_search.search.setup._samplers"}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            yield node, name


def _top_level(path: Path, *, type_only: bool = True) -> set[int]:
    """Line numbers of imports at module level (not inside a function or class); with
    ``type_only``, also those of an ``if TYPE_CHECKING:`` block (never run)."""
    tree = ast.parse(path.read_text())
    lines = {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    for n in tree.body:
        if type_only and isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING":
            lines |= {m.lineno for m in ast.walk(n) if isinstance(m, (ast.Import, ast.ImportFrom))}
        if isinstance(n, ast.If) and getattr(n.test, "id", None) != "TYPE_CHECKING":  # e.g. a Python-version switch
            lines |= {m.lineno for m in n.body + n.orelse if isinstance(m, (ast.Import, ast.ImportFrom))}
    return lines


def _sources():
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield folder, path


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[:2] == ["search", "api"]:
        parts = parts[2:]
    return ".".join(["optuna_search"] + parts).removesuffix(".__init__")


def test_imports_follow_the_layers():
    wrong = []
    for folder, path in _sources():
        for node, name in _imports(path):
            parts = name.split(".")
            if parts[0] != "optuna_search" or len(parts) < 2:
                continue
            target = parts[1]
            if target not in FOLDERS:
                continue  # the public API package itself is not imported by the layers
            if target != folder and target not in ALLOWED[folder]:
                wrong.append(f"{folder}/{path.name}:{node.lineno} imports {name}")
            if (
                folder == "dashboards"
                and target == "objectives"
                and len(parts) > 2
                and parts[2] not in DASHBOARD_OBJECTIVES
            ):
                wrong.append(f"{folder}/{path.name}:{node.lineno} imports {name} (training code)")
    assert not wrong, "imports against the layers' direction:\n" + "\n".join(wrong)


def test_objectives_import_no_optuna():
    found = [
        f"objectives/{p.name}:{n.lineno}"
        for p in (REPO / "objectives").glob("*.py")
        for n, name in _imports(p)
        if name.split(".")[0] in ("optuna", "optuna_dashboard")
    ]
    assert not found, found


def test_project_modules_are_imported_at_the_top_and_heavy_ones_inside_functions():
    heavy_modules = {
        _module(p)
        for _, p in _sources()
        for n, name in _imports(p)
        if name.split(".")[0] in HEAVY and n.lineno in _top_level(p, type_only=False)
    }
    assert heavy_modules == HEAVY_MODULES, heavy_modules
    late, heavy_at_top = [], []
    for folder, path in _sources():
        top, run_at_import = _top_level(path), _top_level(path, type_only=False)
        for node, name in _imports(path):
            where = f"{folder}/{path.relative_to(REPO / folder)}:{node.lineno} {name}"
            if name in HEAVY_MODULES:
                if node.lineno in run_at_import:  # a type-only import of one costs nothing
                    heavy_at_top.append(where + " (a module that imports heavy libraries)")
            elif name.split(".")[0] == "optuna_search" and node.lineno not in top:
                late.append(where)
            elif name.split(".")[0] in HEAVY and node.lineno in run_at_import and _module(path) not in HEAVY_MODULES:
                heavy_at_top.append(where)
    assert not late, "project modules imported inside functions:\n" + "\n".join(late)
    assert not heavy_at_top, "heavy imports at module level:\n" + "\n".join(heavy_at_top)


def test_help_imports_no_heavy_module():
    code = (
        "import sys\nfrom optuna_search.search.front._cli import build_parser\nbuild_parser()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {sorted(HEAVY_MODULES)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


LIFECYCLE = re.compile(
    r"\bstudy\.tell\(|\btrial\.report\(|\benqueue_trial\(|\badd_trials?\(|\bfail_stale_trials\(|"
    r"\.ask\(|\boptuna\.create_study\(|\bset_metric_names\(|\bset_trial_system_attr\(|"
    r"\bset_trial_state_values\(|\bset_trial_user_attr\(|\bset_trial_intermediate_value\(|"
    r"\bset_trial_param\(|(?<![\w.])(claim_waiting|fail_trial|pause|unpause)\("
)
"""Optuna's calls that move a trial (and storage/_internals' wrappers of its private ones)."""


def test_a_trials_state_moves_in_the_ledger_only():
    """Creating studies and trials (``create_study``, ``ask``), claiming, pausing, resuming,
    failing, completing and copying trials, and writing their records: storage/_ledger.py (through Optuna's calls, and
    storage/_internals.py for the private ones). No other module tells Optuna anything,
    enqueues, adds trials, reports intermediate values or calls a storage setter."""
    found = sorted(
        {
            f"{folder}/{p.relative_to(REPO / folder)}"
            for folder, p in _sources()
            for line in p.read_text().splitlines()
            if LIFECYCLE.search(line) and not line.lstrip().startswith(("#", "def ", '"', "'"))
        }
    )
    assert found == ["storage/study/_internals.py", "storage/study/_ledger.py"], found


def test_system_attrs_are_written_by_storage_and_the_grid_samplers_hook_only():
    """Optuna's system attrs are storage's (``storage/_internals.py``), except the grid's
    point, which ``GridPointSampler.before_trial`` records as Optuna's own GridSampler does,
    inside the ``ask`` the ledger makes."""
    pattern = re.compile(r"\bset_trial_system_attrs?\(|\bset_system_attr\(")
    found = sorted(
        f"{folder}/{p.relative_to(REPO / folder)}" for folder, p in _sources() if pattern.search(p.read_text())
    )
    assert found == ["search/setup/_samplers.py", "storage/study/_internals.py"], found


def test_user_attrs_are_written_by_the_records_only():
    """A trial's record is written by the ledger, a study's by storage/_records.py (its
    StudyMeta); no other code sets a user attr (optuna-dashboard's notes are its own system
    attrs)."""
    pattern = re.compile(r"set_user_attr\(|set_trial_user_attrs?\(")
    found = [f"{folder}/{p.relative_to(REPO / folder)}" for folder, p in _sources() if pattern.search(p.read_text())]
    assert sorted(found) == [
        "storage/study/_internals.py",
        "storage/study/_ledger.py",
        "storage/study/_records.py",
    ], found


def test_optuna_private_api_stays_in_internals():
    """Optuna's private attributes (``study._storage``, ``trial._trial_id``, ...) are used in
    storage/_internals.py only, where tests/test_internals.py pins them."""
    pattern = re.compile(
        r"\b(study|trial|storage|sampler|frozen|t)\._(storage|study_id|trial_id|backend|param_names|all_grids|search_space|contains)\b"
    )
    found = [
        f"{folder}/{p.name}" for folder, p in _sources() if p.name != "_internals.py" and pattern.search(p.read_text())
    ]
    assert not found, found


PRIVATE_EXCEPTIONS = {"optuna_search.objectives._trainer"}
"""Reached into from another package: objectives' Trainer subclasses import transformers at
the top, so they are imported inside the one function that trains (never through
objectives/__init__, which ``--help`` imports)."""


def test_packages_use_each_others_public_names_only():
    """A package imports what another exposes in its __init__, not its private modules."""
    wrong = []
    for folder, path in _sources():
        for node, name in _imports(path):
            parts = name.split(".")
            if (
                len(parts) >= 3
                and parts[0] == "optuna_search"
                and parts[1] in FOLDERS
                and parts[1] != folder
                and parts[2].startswith("_")
                and name not in PRIVATE_EXCEPTIONS
            ):
                wrong.append(f"{folder}/{path.relative_to(REPO / folder)}:{node.lineno} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_search_rooms_use_each_others_public_names_only():
    """Inside search/, a room (api, front, setup, loop, remote, use) imports what another room exposes in
    its __init__, never that room's private modules."""
    rooms = {p.name for p in (REPO / "search").iterdir() if (p / "__init__.py").exists()}
    wrong = []
    for path in (REPO / "search").rglob("*.py"):
        rel = path.relative_to(REPO / "search")
        own = rel.parts[0] if len(rel.parts) > 1 else None
        for node, name in _imports(path):
            parts = name.split(".")
            if (
                len(parts) >= 4
                and parts[:2] == ["optuna_search", "search"]
                and parts[2] in rooms
                and parts[2] != own
                and parts[3].startswith("_")
            ):
                wrong.append(f"search/{rel}:{node.lineno} imports {name}")
    assert not wrong, "\n".join(wrong)


STORAGE_ROOMS = {"study": set(), "remote": {"study"}}
"""storage/'s rooms and the rooms each may import (through their faces)."""


def test_storage_rooms_point_one_way_through_their_faces():
    """storage/ is two rooms: the study database (study/) and its remote copy (remote/).
    The remote reads the study room through its __init__; the study room never imports
    the remote; nothing in the product imports the simulated Hub (storage/testing.py)."""
    wrong = []
    for folder, path in _sources():
        rel = path.relative_to(REPO / folder)
        own = rel.parts[0] if folder == "storage" and len(rel.parts) > 1 else None
        for node, name in _imports(path):
            parts = name.split(".")
            where = f"{folder}/{rel}:{node.lineno} imports {name}"
            if parts[:3] == ["optuna_search", "storage", "testing"]:
                wrong.append(where + " (the simulated Hub is for tests and benchmarks)")
            if folder != "storage" or len(parts) < 3 or parts[:2] != ["optuna_search", "storage"]:
                continue
            room = parts[2]
            if room not in STORAGE_ROOMS or own is None or room == own:
                continue
            if room not in STORAGE_ROOMS[own]:
                wrong.append(where + f" (the {own} room may not import the {room} room)")
            elif len(parts) > 3:
                wrong.append(where + " (another room's private module: import its face)")
    assert not wrong, "\n".join(wrong)
    rooms = {p.name for p in (REPO / "storage").iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(STORAGE_ROOMS), rooms
    flat = sorted(p.name for p in (REPO / "storage").glob("*.py"))
    assert flat == ["__init__.py", "testing.py"], flat  # every module lives in a room


def test_every_package_can_be_star_imported():
    """`from optuna_search.storage import *` raised AttributeError: __all__ named a name the
    package no longer had. Every package's __all__ names what it has."""
    import importlib

    packages = sorted({_module(p) for _, p in _sources() if p.name == "__init__.py"} | {"optuna_search"})
    missing = {}
    for name in packages:
        module = importlib.import_module(name)
        absent = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        if absent:
            missing[name] = absent
    assert not missing, missing
    assert len(packages) >= 15, packages


def test_no_function_is_longer_than_sixty_lines():
    long = [
        f"{folder}/{path.relative_to(REPO / folder)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for folder, path in _sources()
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60
    ]
    assert not long, long
