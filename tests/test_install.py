"""The project as a user installs it, never the editable checkout the rest of the suite uses:

- the documented install, ``pip install <source folder>``, from a clean checkout mounted
  read-only (Kaggle's ``/kaggle/input`` is; a byte-for-byte comparison of the tree before
  and after, where this machine cannot mount one): the install works and writes nothing
  there;
- the offline path: ``optuna-search wheelhouse`` (docs/kaggle.md) makes a folder of wheels
  from that read-only source, and a fresh environment that has only torch (as Kaggle's
  image has it) installs from it with the index disabled;
- that installed wheel, in a fresh folder with a new HOME and empty caches, runs what a
  user runs: ``--help``, the demo study, ``status``, ``report``, ``predict``,
  ``export-model``, and the dashboard (started, its page fetched, stopped).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from userseat import (
    can_mount_read_only,
    clean_checkout,
    fresh_venv,
    image_layer,
    needs,
    read_only,
    tree_digest,
    user_env,
)

pytestmark = pytest.mark.slow

SMALL_DEMO = [
    "--preset",
    "demo",
    "--set",
    "study.grid={lora_r=[4, 8]}",
    "--set",
    "train.epochs=1",
    "--set",
    "data.train_samples=48",
    "--set",
    "eval.num_samples=20",
    "--set",
    "eval.validation_samples=20",
]
"""The demo at a smoke size: what is checked here is the installed package, not the study
(tests/test_study.py runs the README's demo as written)."""


def _offline(env: dict[str, str]) -> dict[str, str]:
    """No index, no find-links, no pip configuration of this machine: only what is given."""
    out = {k: v for k, v in env.items() if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")}
    return {**out, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A clean checkout of this tree (what a user attaches as the dataset)."""
    return clean_checkout(tmp_path_factory.mktemp("attached") / "optuna-search-src")


def _as_on_kaggle(argv: list[str], src: Path) -> list[str]:
    return read_only(argv, [src]) if can_mount_read_only() else argv


def test_the_documented_install_works_from_a_read_only_folder_and_writes_nothing_there(source, tmp_path):
    """`pip install /kaggle/input/optuna-search-src`, as docs/kaggle.md's cell runs it, on a
    fresh environment whose image has everything but what Kaggle's lacks."""
    before = tree_digest(source)
    lacks = frozenset({"bitsandbytes", "peft", "optuna-dashboard", "tomli-w"})
    image = image_layer(
        tmp_path / "image" / "site-packages", [n for n in needs("optuna-search", skip=lacks) if n != "optuna-search"]
    )
    bin_dir = fresh_venv(tmp_path / "venv", image)
    env = user_env(bin_dir, tmp_path / "home")
    proc = _run(_as_on_kaggle(["pip", "install", "-q", str(source)], source), tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Read-only" not in proc.stderr
    assert tree_digest(source) == before  # nothing written into the source folder
    shown = _run(["optuna-search", "--version"], tmp_path, env)
    assert shown.returncode == 0 and "optuna-search 0." in shown.stdout, shown.stderr
    if not can_mount_read_only():
        pytest.skip("installed and compared byte for byte; this machine cannot mount a folder read-only to show more")


@pytest.fixture(scope="module")
def installed(source, tmp_path_factory):
    """The wheelhouse made from the read-only source, installed offline into a fresh
    environment whose image has torch only: (bin folder, environment, wheelhouse)."""
    base = tmp_path_factory.mktemp("offline")
    house = base / "wheelhouse"
    env_here = {k: v for k, v in os.environ.items() if not k.startswith("OPTUNA_SEARCH_")}
    proc = _run(
        _as_on_kaggle(
            [
                str(Path(sys.executable).parent / "optuna-search"),
                "wheelhouse",
                "--output",
                str(house),
                "--source",
                str(source),
            ],
            source,
        ),
        base,
        env_here,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pip install --no-index --find-links {house} optuna-search" in proc.stdout
    bin_dir = fresh_venv(base / "venv", image_layer(base / "image" / "site-packages", needs("torch")))
    env = user_env(bin_dir, base / "home")
    # --no-compile: byte-compiling 60 packages is most of an install's time, and says nothing
    # of whether the wheelhouse is complete.
    proc = _run(
        ["pip", "install", "-q", "--no-compile", "--find-links", str(house), "optuna-search"], base, _offline(env)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bin_dir, env, house


def test_the_wheelhouse_holds_the_project_and_its_needs_but_not_torch(installed):
    _, _, house = installed
    names = {p.name.split("-")[0].lower() for p in house.glob("*.whl")}
    assert {"optuna_search", "optuna", "optuna_dashboard", "peft", "bitsandbytes", "transformers"} <= names
    assert not {n for n in names if n == "torch" or n.startswith(("nvidia", "triton"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_installed_wheel_runs_what_a_user_runs(installed, tmp_path):
    bin_dir, env, _ = installed
    work = tmp_path / "work"
    work.mkdir()
    cli = [str(bin_dir / "optuna-search")]
    helped = _run([*cli, "--help"], work, env)
    assert helped.returncode == 0 and "predict" in helped.stdout and "wheelhouse" in helped.stdout, helped.stderr
    ran = _run([*cli, "run", *SMALL_DEMO], work, env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "2/2" in ran.stdout and "majority" in ran.stdout, ran.stdout
    status = _run([*cli, "status", "--preset", "demo"], work, env)
    assert status.returncode == 0 and "2/2 grid points complete" in status.stdout, status.stdout + status.stderr
    report = _run([*cli, "report", "--preset", "demo", "--output", "report"], work, env)
    assert report.returncode == 0 and (work / "report" / "report.html").is_file(), report.stderr[-2000:]
    rows = work / "new.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "input": f"Title: crash {i}\n\nDescription: it crashes"}) + "\n"
            for i in range(3)
        )
    )
    predicted = _run([*cli, "predict", "--preset", "demo", "--input", str(rows), "--output", "out.jsonl"], work, env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert [json.loads(line)["id"] for line in (work / "out.jsonl").read_text().splitlines()] == ["r0", "r1", "r2"]
    exported = _run([*cli, "export-model", "--preset", "demo", "--output", "model"], work, env)
    assert exported.returncode == 0 and (work / "model" / "README.md").is_file(), exported.stderr[-2000:]
    _dashboard_answers(cli, work, env)


def _dashboard_answers(cli: list[str], work: Path, env: dict[str, str]) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [*cli, "dashboard", "--preset", "demo", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        page = None
        for _ in range(600):  # the server's start, polled (it says nothing when it listens)
            if proc.poll() is not None:
                raise AssertionError(f"the dashboard exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    page = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.1)
        assert page is not None, "the dashboard never answered"
        assert [s["study_name"] for s in page["study_summaries"]] == ["demo"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:  # redirected to /dashboard
            assert r.status == 200 and b"<title>Optuna Dashboard</title>" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
