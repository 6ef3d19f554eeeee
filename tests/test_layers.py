"""The package's layers have one direction (README, Development):

    core  <-  storage  <-  objectives  <-  dashboards  <-  search

core is the base every folder may import; storage imports nothing from search/ or
objectives/; objectives/ imports no Optuna and nothing from search/; dashboards/ reads
studies and records and never trains; search/ orchestrates. Project modules are imported
at the top of files; heavy libraries only inside functions (the --help test guards that).
"""

import ast
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
HEAVY = ("torch", "transformers", "peft", "optuna", "optuna_dashboard", "plotly", "sklearn", "scipy", "datasets",
         "bitsandbytes", "accelerate", "sqlalchemy")


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


def _top_level(path: Path) -> set[int]:
    """Line numbers of imports at module level (not inside a function or class)."""
    tree = ast.parse(path.read_text())
    return {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}


def test_imports_follow_the_layers():
    wrong = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).glob("*.py")):
            for node, name in _imports(path):
                parts = name.split(".")
                if parts[0] != "optuna_search" or len(parts) < 2:
                    continue
                target = parts[1]
                if target != folder and target not in ALLOWED[folder]:
                    wrong.append(f"{folder}/{path.name}:{node.lineno} imports {name}")
                if folder == "dashboards" and target == "objectives" and len(parts) > 2 and parts[2] not in DASHBOARD_OBJECTIVES:
                    wrong.append(f"{folder}/{path.name}:{node.lineno} imports {name} (training code)")
    assert not wrong, "imports against the layers' direction:\n" + "\n".join(wrong)


def test_objectives_import_no_optuna():
    found = [f"objectives/{p.name}:{n.lineno}" for p in (REPO / "objectives").glob("*.py")
             for n, name in _imports(p) if name.split(".")[0] in ("optuna", "optuna_dashboard")]
    assert not found, found


def test_project_modules_are_imported_at_the_top_and_heavy_ones_inside_functions():
    late, heavy_at_top = [], []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).glob("*.py")):
            top = _top_level(path)
            for node, name in _imports(path):
                root = name.split(".")[0]
                if root == "optuna_search" and node.lineno not in top:
                    late.append(f"{folder}/{path.name}:{node.lineno} {name}")
                if root in HEAVY and node.lineno in top:
                    heavy_at_top.append(f"{folder}/{path.name}:{node.lineno} {name}")
    assert not late, "project modules imported inside functions:\n" + "\n".join(late)
    assert not heavy_at_top, "heavy libraries imported at module level:\n" + "\n".join(heavy_at_top)
