"""The Kaggle path as a user walks it, rehearsed: the cells of docs/kaggle.md, parsed from
the page and run as written in emulated Kaggle sessions, with only what a CPU cannot run
swapped (``SWAPS`` lists each swap and why).

An emulated session is what a Kaggle session is to the project:
- ``/kaggle/input`` read-only (a read-only bind mount where this machine allows one),
  holding the source (``optuna-search-src``, a clean checkout), the data and the model
  folder written by ``save_pretrained``; ``/kaggle/working`` a fresh empty folder;
- the image's packages preinstalled (torch, transformers, ... everything but what a
  Kaggle image lacks: bitsandbytes, peft, optuna-dashboard, tomli-w), ``HOME`` and every
  cache new, and the project installed by the cell's own ``pip install`` line (a
  non-editable build from the read-only source);
- ``kaggle_secrets.UserSecretsClient`` handing out ``HF_TOKEN``; the Hub simulated
  (``SimulatedHub``: a bucket, its limits on);
- two workers, as the kaggle-t4 preset runs on Kaggle's two GPUs (one per GPU).

Session 1 is killed hard (the 12-hour wall: every process at once) in the middle of a
point, once that point's checkpoint is in the remote. Session 2 runs the same cell: the
interrupted point continues from its uploaded step, nothing finished is trained again,
and its time budget runs out at a checkpoint (exit 3). Session 3 runs the same cell and
finishes (exit 0, the results table). A last session uses the winner from the remote
alone (the second cell: status, predict, export-model)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import HOOKS, REPO, wait_for_holds
from optuna.trial import TrialState
from userseat import can_mount_read_only, clean_checkout, fresh_venv, image_layer, needs, read_only, user_env

pytestmark = pytest.mark.slow

PAGE = REPO / "docs" / "kaggle.md"
TOKEN = "hf_rehearsal_SECRET_token_0123456789"
LACKS = frozenset({"bitsandbytes", "peft", "optuna-dashboard", "tomli-w"})
"""What a Kaggle image does not ship (the cell's `pip install` brings it)."""
SIZES = [
    # sizes for speed: 160 examples are 10 optimizer steps of 4 x 4, one epoch
    "data.train_samples=160",
    "train.epochs=1",
    "eval.num_samples=20",
    "eval.validation_samples=20",
    # a checkpoint every 5 steps, so that a point has one mid-way; a dead session's
    # heartbeats go stale in 3 s instead of 180 s
    "train.checkpoint_steps=5",
    "storage.heartbeat_interval=1",
    "storage.grace_period=3",
    "storage.remote_timeout=60",
    "train.learning_rate=5e-3",
]
SWAPS = {
    "/kaggle/": "<emulated machine>/kaggle/  (no /kaggle on the test machine)",
    "hf://buckets/YOU/": "hf://buckets/rehearsal/  (the Hub simulated, SimulatedHub)",
    "--set (appended)": "the sizes above, for speed; the tiny demo model and synthetic reports stand in for "
    "Mistral-7B and the real ones (same folders, same formats)",
    "--workers 2 (appended)": "a CPU has no GPUs; kaggle-t4 on Kaggle's two runs one worker per GPU",
    "--progress-interval 0 (appended)": "a progress line at every step, where the test holds a session",
}
"""Nothing else is changed; session 2's 11h30m budget runs out because the test moves the
budget's clock 12 hours on at its workers' first training step (tests/hooks: the trainer's
and the scheduler's clock only), so no session waits for a wall clock."""


def cells() -> list[str]:
    """The page's Python cells that a Kaggle session runs (they use the secrets client)."""
    return [c for c in re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S) if "kaggle_secrets" in c]


def _swapped(cell: str, root: Path, extra: list[str]) -> str:
    text = cell.replace("/kaggle/", f"{root}/kaggle/").replace("hf://buckets/YOU/", "hf://buckets/rehearsal/")
    run = re.search(r"^!optuna-search run .*?(?<!\\)$", text, re.M | re.S)
    if run is not None and extra:
        text = text[: run.end()] + " " + " ".join(extra) + text[run.end() :]
    return text + "\n"


RUNNER = """
import json, os, subprocess, sys
cell, report = open(sys.argv[1]).read(), sys.argv[2]
python, codes = [], []
logical = []
for line in cell.split("\\n"):
    if logical and logical[-1].endswith("\\\\"):
        logical[-1] = logical[-1][:-1] + " " + line.strip()
    else:
        logical.append(line)
for line in logical:
    if line.startswith("!"):
        exec("\\n".join(python), globals())  # the cell's Python so far, as Jupyter runs it
        python = []
        codes.append([line[1:], subprocess.run(line[1:], shell=True).returncode])
        with open(report, "w") as fh:
            json.dump(codes, fh)
    else:
        python.append(line)
exec("\\n".join(python), globals())
"""


class Machine:
    """The emulated Kaggle machine: attached inputs (read-only), the image, the Hub."""

    def __init__(self, root: Path, demo_model: Path, demo_data: Path) -> None:
        self.root = root
        self.input = root / "kaggle" / "input"
        clean_checkout(self.input / "optuna-search-src")
        shutil.copytree(demo_model, self.input / "mistral" / "transformers" / "7b-instruct-v0.2" / "1")
        data = self.input / "game-bugs"
        data.mkdir(parents=True)
        for split in ("train", "val", "test"):
            shutil.copyfile(demo_data / f"{split}.jsonl", data / f"{split}.jsonl")
        reports = self.input / "new-bug-reports"
        reports.mkdir()
        rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()[:6]]
        (reports / "reports.jsonl").write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in rows))
        self.image = image_layer(
            root / "image" / "site-packages", [n for n in needs("optuna-search", skip=LACKS) if n != "optuna-search"]
        )
        (root / "secrets.json").write_text(json.dumps({"HF_TOKEN": TOKEN}))
        (self.image / "kaggle_secrets.py").write_text(
            "import json\n\n\nclass UserSecretsClient:\n    def get_secret(self, label):\n"
            f"        return json.load(open({str(root / 'secrets.json')!r}))[label]\n"
        )
        self.hub = root / "hub"
        self.n = 0

    def session(self, cell: str, extra: list[str], **env: str) -> Session:
        self.n += 1
        working = self.root / "kaggle" / "working"
        shutil.rmtree(working, ignore_errors=True)
        working.mkdir(parents=True)
        here = self.root / f"session-{self.n}"
        bin_dir = fresh_venv(here / "venv", self.image)
        (here / "cell.py").write_text(_swapped(cell, self.root, extra))
        (here / "runner.py").write_text(RUNNER)
        environment = user_env(
            bin_dir,
            here / "home",
            PYTHONPATH=str(HOOKS),
            OPTUNA_SEARCH_TEST_HUB=str(self.hub),
            PYTHONUNBUFFERED="1",
            **env,
        )
        argv = [str(bin_dir / "python"), str(here / "runner.py"), str(here / "cell.py"), str(here / "codes.json")]
        if can_mount_read_only():
            argv = read_only(argv, [self.input])
        proc = subprocess.Popen(
            argv,
            cwd=working,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        return Session(proc, here, working)


class Session:
    def __init__(self, proc: subprocess.Popen, here: Path, working: Path) -> None:
        self.proc, self.here, self.working = proc, here, working
        self.seen: list[str] = []

    def finish(self, timeout: int = 600) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.seen.append(err)
        return out, "".join(self.seen)

    def codes(self) -> list[tuple[str, int]]:
        path = self.here / "codes.json"
        return [tuple(c) for c in json.loads(path.read_text())] if path.exists() else []

    def kill_hard(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # every process of the session at once
        self.proc.wait()


def _remote(machine: Machine):
    from optuna_search.storage import Remote
    from optuna_search.storage.testing import SimulatedHub

    return Remote("hf://buckets/rehearsal/bug-triage-study", hub=SimulatedHub(machine.hub))


def _wait_for(predicate, what, timeout=300):
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.3)


def _study(machine: Machine) -> optuna.Study:
    """The study as the remote holds it (its database, pulled into a scratch folder)."""
    remote = _remote(machine)
    scratch = machine.root / f"read-{time.monotonic_ns()}"
    remote.pull(remote.manifests()["study"], scratch)
    return optuna.load_study(study_name="mistral7b-bugs-qlora", storage=f"sqlite:///{scratch / 'study.db'}")


def test_the_kaggle_cells_as_written_over_four_sessions_and_a_kill(tmp_path, demo_model_dir):
    from optuna_search.objectives._demo_data import ensure_demo_data

    run_cell, use_cell = cells()
    readme = (REPO / "README.md").read_text()
    assert run_cell.strip() in readme, "the README's Kaggle cell is not the one docs/kaggle.md documents"
    machine = Machine(tmp_path, demo_model_dir, ensure_demo_data())
    common = [a for s in SIZES for a in ("--set", s)] + ["--workers", "2", "--progress-interval", "0"]

    # Session 1: the 12-hour wall, in the middle of lora_r=8, once its step-5 checkpoint is uploaded.
    s1 = machine.session(run_cell, common, OPTUNA_SEARCH_TEST_HOLD=r"lora_r=8\] .*step [6-9]/")
    s1.seen += wait_for_holds(s1.proc)
    unit = "points/mistral7b-bugs-qlora/lora_r-8"
    _wait_for(
        lambda: (
            (m := _remote(machine).manifests().get(unit)) is not None and "checkpoint-5/trainer_state.json" in m.files
        ),
        "lora_r=8's step-5 checkpoint in the remote",
    )
    s1.kill_hard()
    assert s1.codes() == [("pip install -q " + f"{tmp_path}/kaggle/input/optuna-search-src", 0)]
    done_in_1 = {t.params["lora_r"]: t.number for t in _study(machine).get_trials() if t.state == TrialState.COMPLETE}
    time.sleep(3.5)  # its lease and its trials' heartbeats go stale (grace 3 s; on Kaggle, 180 s)

    # Session 2: the same cell; its time budget runs out (12 hours pass at its first steps).
    s2 = machine.session(run_cell, common, OPTUNA_SEARCH_TEST_SKEW=r" step \d+/=43200")
    _, err2 = s2.finish()
    assert [c for _, c in s2.codes()] == [0, 3], err2[-4000:]
    assert "time budget reached" in err2
    assert "pulled the study from hf://buckets/rehearsal/bug-triage-study" in err2
    # lora_r=8 went on from the step-5 checkpoint session 1 uploaded, and stopped at a new one.
    assert re.search(r"lora_r=8\] resuming from checkpoint \S+checkpoint-5 \(step 5\)", err2), err2[-4000:]
    stopped = [t for t in _study(machine).get_trials() if "stopped_by_time_budget" in t.user_attrs]
    stop_step = {
        t.params["lora_r"]: int(re.search(r"step (\d+)/", t.user_attrs["stopped_by_time_budget"]).group(1))
        for t in stopped
    }
    assert stop_step.get(8, 0) > 5, stop_step

    # Session 3: the same cell, to the end.
    s3 = machine.session(run_cell, common)
    out3, err3 = s3.finish()
    assert [c for _, c in s3.codes()] == [0, 0], err3[-4000:]
    study = _study(machine)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora_r"] for t in complete) == [4, 8, 16]  # one COMPLETE trial per point
    for r, number in done_in_1.items():  # what session 1 finished was never trained again
        assert [t.number for t in study.get_trials() if t.params.get("lora_r") == r] == [number]
    for r, step in stop_step.items():  # each stopped point went on from where session 2 stopped it
        final = next(t for t in complete if t.params["lora_r"] == r)
        assert final.user_attrs["resumed_from_step"] == step, (r, final.user_attrs["resumed_from_step"], step)
    assert "3/3 grid points complete" in out3 and "majority" in out3
    for r in (4, 8, 16):
        assert re.search(rf"^lora_r={r}\s.*complete$", out3, re.M), out3

    # The last session: the winner from the remote alone.
    s4 = machine.session(use_cell, [])
    out4, err4 = s4.finish()
    assert [c for _, c in s4.codes()] == [0, 0, 0, 0], err4[-4000:]
    assert "3/3 grid points complete" in out4
    predictions = (machine.root / "kaggle" / "working" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 6 and all("severity" in json.loads(p)["labels"] for p in predictions)
    assert (machine.root / "kaggle" / "working" / "model" / "README.md").is_file()

    # The token went nowhere: no output, no file of the sessions, nothing in the remote.
    shown = out3 + err2 + err3 + out4 + err4 + "".join(s1.seen)
    assert TOKEN not in shown
    for folder in (machine.root / "kaggle" / "working", machine.hub):
        for f in folder.rglob("*"):
            assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f


def test_the_rehearsal_fails_when_the_cell_is_broken(tmp_path):
    """What the rehearsal reads is the page: a cell whose install line or remote flag is
    broken is not the cell the test would pass (checked on the parsed text, as the long
    test runs it)."""
    run_cell, _ = cells()
    assert "!pip install -q /kaggle/input/optuna-search-src" in run_cell
    assert "--remote hf://buckets/YOU/bug-triage-study" in run_cell
    swapped = _swapped(run_cell, tmp_path, ["--workers", "2"])
    assert f"!pip install -q {tmp_path}/kaggle/input/optuna-search-src" in swapped
    assert "hf://buckets/rehearsal/bug-triage-study" in swapped and swapped.count("--workers 2") == 1
    assert re.search(r"--set data\.test=\S+test\.jsonl --workers 2", swapped), swapped
