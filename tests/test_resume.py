"""Interrupted studies: SIGKILL at chosen moments, time budgets, OOM fallback, failures,
bundles between sessions. The guarantee: every grid point ends with exactly one COMPLETE
trial, no completed trial is lost or changed, and interrupted training resumes."""

import json
import os
import signal
import sqlite3
import time

import optuna
import pytest
from conftest import FAST, run_main, start_cli_until
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

# Short heartbeat so a restarted run reclaims a killed trial within seconds; one grid
# point of two epochs (150 steps, a checkpoint every 10) keeps the kill test short.
KILL = [
    *FAST,
    "--set",
    "storage.heartbeat_interval=1",
    "--set",
    "storage.grace_period=3",
    "--set",
    "study.grid={lora_r=[4]}",
]


def _study(work):
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")


def _run_and_kill_at(work, pattern):
    """Start `run`, hold it at its first log line matching ``pattern``, SIGKILL it there."""
    proc = start_cli_until("run", *KILL, pattern=pattern, cwd=work)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _complete(work):
    return {
        t.number: (t.params["lora_r"], t.value) for t in _study(work).get_trials() if t.state == TrialState.COMPLETE
    }


def test_sigkill_at_any_moment_loses_nothing_and_resumes(tmp_path, demo_cache, scored_study):
    # Killed where the test holds it (never racing its progress): inside training past a
    # checkpoint, in the second epoch, before the evaluation, after the trial is done but
    # before the study recorded it.
    moments = [r"epoch [0-9.]+/2 step (5[1-9]|6\d)/", r"epoch 1\.[3-9]", r"evaluating on", r"\] done: "]
    seen: dict[int, tuple] = {}
    for pattern in moments:
        _run_and_kill_at(tmp_path, pattern)
        db = sqlite3.connect(tmp_path / "optuna-search-demo.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        now = _complete(tmp_path)
        assert all(now.get(n) == v for n, v in seen.items()), "a COMPLETE trial was lost or changed"
        seen = now
    proc = run_main("run", *KILL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(tmp_path).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.params["lora_r"] for t in complete] == [4]  # the point exactly once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(_complete(tmp_path).get(n) == v for n, v in seen.items())
    assert max(t.user_attrs["resumed_from_step"] for t in complete) > 0
    assert max(t.user_attrs["attempts"] for t in complete) > 1
    # The loss curve of a resumed trial still has every epoch.
    for t in complete:
        assert len(t.user_attrs["train_loss_per_epoch"]) == 2 and sorted(t.intermediate_values) == [1, 2]
    # A resumed point gives the result of an uninterrupted run (same seed, data order, RNG):
    # the tests' scored study trained the same point without a kill (its evaluation method
    # differs, and validation leaves the random state as it found it).
    resumed4 = next(t for t in complete if t.params["lora_r"] == 4)
    (ref,) = [t for t in _study(scored_study).get_trials() if t.params["lora_r"] == 4]
    assert ref.user_attrs["train_loss_per_epoch"] == pytest.approx(
        resumed4.user_attrs["train_loss_per_epoch"], rel=0.05
    )


def test_time_budget_stops_resumably_with_its_own_exit_code(tmp_path, demo_cache, monkeypatch):
    """A one-hour budget, and the training's clock moved two hours on when the first trial
    logs its second step (the test decides when the deadline passes, whatever the
    machine's speed; nothing sleeps): it checkpoints there and stops with exit code 3; the
    next run resumes it from that step."""
    import logging
    import re
    import types

    from optuna_search.objectives import _trainer

    skew = [0.0]
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.monotonic = lambda: time.monotonic() + skew[0]
    monkeypatch.setattr(_trainer, "time", clock)

    class _Jump(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if re.search(r" step 2/", record.getMessage()):
                skew[0] = 7200.0
            return True

    jump = _Jump()
    logging.getLogger("optuna_search").addFilter(jump)
    try:
        proc = run_main("run", *FAST, "--time-budget", "1h", "--progress-interval", "0", cwd=tmp_path)
    finally:
        logging.getLogger("optuna_search").removeFilter(jump)
        skew[0] = 0.0
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "time budget reached at step 2/" in proc.stderr
    trials = _study(tmp_path).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    (stopped,) = [t for t in trials if "stopped_by_time_budget" in t.user_attrs]
    status = run_main("status", *FAST, cwd=tmp_path)
    assert status.returncode == 1 and "0/2 grid points complete" in status.stdout
    proc = run_main("run", *FAST, cwd=tmp_path)
    assert proc.returncode == 0
    complete = [t for t in _study(tmp_path).get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora_r"] for t in complete) == [4, 8]
    resumed = next(t for t in complete if t.params == stopped.params)
    assert resumed.user_attrs["resumed_from_step"] == 2


def test_duration_parsing():
    import argparse

    from optuna_search.search.front._cli import parse_duration

    assert parse_duration("11h30m") == 41400
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45 and parse_duration("600") == 600
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")


def _one_point(*extra):
    return ["run", *FAST, "--set", "study.grid={lora_r=[4]}", "--set", "train.epochs=1", *extra]


def test_out_of_memory_retries_with_half_batch_same_effective_batch(tmp_path, demo_cache, monkeypatch, capsys):
    import torch
    from transformers import Trainer

    from optuna_search.search.front._cli import main

    real = Trainer.training_step

    def fake_oom(self, *a, **kw):
        if self.args.per_device_train_batch_size > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(Trainer, "training_step", fake_oom)
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 0
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.COMPLETE
    assert (t.user_attrs["batch_size"], t.user_attrs["gradient_accumulation"]) == (4, 2)  # demo: 8 x 1
    assert t.user_attrs["oom_retries"][0]["batch_size"] == 8


def test_failed_point_is_recorded_and_only_retried_when_asked(tmp_path, demo_cache, monkeypatch, capsys):
    from transformers import Trainer

    from optuna_search.search.front._cli import main

    real = Trainer.training_step
    monkeypatch.setattr(
        Trainer, "training_step", lambda self, *a, **kw: (_ for _ in ()).throw(ValueError("NaN in logits"))
    )
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 1
    err = capsys.readouterr().err
    assert "lora_r=4 is failed (ValueError: NaN in logits)" in err and "--retry-failed" in err
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.FAIL and t.user_attrs["error"] == "ValueError: NaN in logits"
    monkeypatch.setattr(Trainer, "training_step", real)
    assert main(_one_point()) == 1  # not retried by accident
    assert len(_study(tmp_path).get_trials()) == 1
    assert main(_one_point("--retry-failed")) == 0
    states = [t.state for t in _study(tmp_path).get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_checkpoint_cut_short_by_a_kill_is_skipped_not_resumed_from(tmp_path, demo_cache, monkeypatch, caplog):
    """A kill while Trainer writes checkpoint-N leaves a folder without trainer_state.json
    (written last). Trainer's own choice would be that folder, the highest step; the
    retry must resume from the newest complete one instead."""
    import shutil

    from transformers import Trainer

    from optuna_search.search.front._cli import main

    real = Trainer.training_step

    def interrupt_at_35(self, *a, **kw):
        if self.state.global_step >= 35:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Trainer, "training_step", interrupt_at_35)
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 130
    point = tmp_path / "optuna-search-demo-checkpoints" / "demo" / "lora_r-4"
    assert (point / "checkpoint-30" / "trainer_state.json").is_file()
    # The interrupted write: the adapter is there, the optimizer and trainer state are not.
    cut = point / "checkpoint-40"
    cut.mkdir()
    for f in (point / "checkpoint-30").glob("adapter_*"):
        shutil.copy(f, cut / f.name)
    monkeypatch.setattr(Trainer, "training_step", real)
    caplog.set_level("INFO", logger="optuna_search")
    assert main(_one_point()) == 0
    done = [t for t in _study(tmp_path).get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["resumed_from_step"] == 30
    assert "checkpoint-40: its write was interrupted" in caplog.text


def test_last_complete_checkpoint_skips_unfinished_and_foreign_folders(tmp_path):
    from optuna_search.storage.study._checkpoints import has_checkpoint, last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "absent") == (None, [])
    (tmp_path / "checkpoint-100").mkdir()
    assert not has_checkpoint(tmp_path)  # only a cut-short one: nothing to resume from
    for step, complete in ((10, True), (20, True), (30, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
                (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    last, broken = last_complete_checkpoint(tmp_path)
    assert last == tmp_path / "checkpoint-20" and has_checkpoint(tmp_path)
    assert broken == [tmp_path / "checkpoint-100", tmp_path / "checkpoint-30"]  # numeric order, newest first


def _manifest(remote, unit):
    return json.loads((remote / "manifests" / f"{unit}.json").read_text())


def test_export_and_resume_from_a_read_only_bundle_twice(demo_study, tmp_path):
    """`export` writes the study to a remote in a folder; the next session (a read-only
    Kaggle input) pulls it; the same cell run again in the same folder recognises the
    study as the bundle's (seen: 'already exists and differs from the bundle's')."""
    work, proc = demo_study
    assert proc.returncode == 0
    bundle = tmp_path / "bundle"
    out = run_main("export", "--preset", "demo", "--output", str(bundle), cwd=work)
    assert out.returncode == 0, out.stderr
    study = _manifest(bundle, "study")
    assert "study.db" in study["files"] and any(f.startswith("artifacts/") for f in study["files"])
    assert sum(f.startswith("final-adapter/") for f in _manifest(bundle, "points/demo/lora_r-4")["files"]) >= 2
    for p in bundle.rglob("*"):  # like a Kaggle input dataset
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    new = tmp_path / "next-session"
    new.mkdir()
    for _ in range(2):
        proc = run_main("run", "--preset", "demo", "--resume-from", str(bundle), cwd=new)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "nothing to run" in proc.stdout
        assert len(_study(new).get_trials()) == 3
        # The adapter named is this folder's copy, not the exporting folder's (which still exists here).
        (adapter,) = [
            line.split("its adapter: ")[1].split(";")[0] for line in proc.stdout.splitlines() if "its adapter" in line
        ]
        assert (new / adapter).resolve().is_relative_to(new.resolve()), adapter  # relative: from `new`
    # A config mistake first, then the corrected command: the bundle is no wall.
    other = tmp_path / "third"
    other.mkdir()
    bad = run_main(
        "run", "--preset", "demo", "--resume-from", str(bundle), "--set", "data.test='missing.jsonl'", cwd=other
    )
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr
    assert run_main("run", "--preset", "demo", "--resume-from", str(bundle), cwd=other).returncode == 0


def test_damaged_or_outdated_bundle_is_refused(demo_study, tmp_path):
    import hashlib

    work, _ = demo_study
    bundle = tmp_path / "bundle"
    assert run_main("export", "--preset", "demo", "--output", str(bundle), cwd=work).returncode == 0
    art = bundle / "objects" / next(iter(_manifest(bundle, "study")["files"].values()))["sha256"]
    art.write_bytes(art.read_bytes() + b"x")
    new = tmp_path / "s1"
    new.mkdir()
    proc = run_main("run", "--preset", "demo", "--resume-from", str(bundle), cwd=new)
    assert proc.returncode == 2 and "does not verify" in proc.stderr and "Traceback" not in proc.stderr
    assert not (new / "optuna-search-demo.db").exists()

    old = tmp_path / "old"
    assert run_main("export", "--preset", "demo", "--output", str(old), cwd=work).returncode == 0
    m = _manifest(old, "study")
    db_path = tmp_path / "study.db"
    db_path.write_bytes((old / "objects" / m["files"]["study.db"]["sha256"]).read_bytes())
    db = sqlite3.connect(db_path)
    db.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")
    db.commit()
    db.close()
    data = db_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (old / "objects" / digest).write_bytes(data)
    m["files"]["study.db"] = {"sha256": digest, "bytes": len(data)}
    (old / "manifests" / "study.json").write_text(json.dumps(m))
    new = tmp_path / "s2"
    new.mkdir()
    proc = run_main("run", "--preset", "demo", "--resume-from", str(old), cwd=new)
    assert proc.returncode == 2 and "optuna storage upgrade" in proc.stderr
    assert not (new / "optuna-search-demo.db").exists()


def test_a_bundle_of_an_earlier_version_still_resumes(demo_study, tmp_path):
    from legacy_bundle import write_legacy_bundle

    work, _ = demo_study
    bundle = tmp_path / "v03-bundle"
    write_legacy_bundle(
        work / "optuna-search-demo.db",
        "demo",
        work / "optuna-search-demo-checkpoints",
        work / "optuna-search-demo-artifacts",
        bundle,
    )
    new = tmp_path / "next"
    new.mkdir()
    proc = run_main("run", "--preset", "demo", "--resume-from", str(bundle), cwd=new)
    assert proc.returncode == 0 and "nothing to run" in proc.stdout, proc.stderr[-2000:]


def test_trial_killed_before_its_first_heartbeat_is_reclaimed(tmp_path):
    """Optuna's stale check skips trials without a heartbeat record; a process killed
    between creating its trial and starting the heartbeat must not leave it RUNNING."""
    from optuna_search.storage.study._ledger import Ledger
    from optuna_search.storage.study._storages import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    orphan = study.ask()  # RUNNING, never heartbeated
    ledger = Ledger(study)
    assert ledger.reconcile(grace_period=60) == 0  # too young: might be starting up
    time.sleep(1.2)
    assert ledger.reconcile(grace_period=1) == 1
    t = study.get_trials()[orphan.number]
    assert t.state == TrialState.FAIL and "orphaned" in t.user_attrs


def test_sigterm_checkpoints_marks_the_trial_failed_and_the_next_run_resumes_at_once(tmp_path, demo_cache):
    """docker stop / Kaggle's stop session send SIGTERM: the trial must not stay RUNNING
    (the next run would wait out the 180 s grace period), and a demo step takes well under
    the grace time, so it checkpoints where it was: no periodic checkpoint exists
    (checkpoint_steps beyond the trial), yet the retry resumes past step 40."""
    args = ["run", *FAST, "--set", "study.grid={lora_r=[4]}", "--set", "train.checkpoint_steps=1000"]
    proc = start_cli_until(*args, pattern=r"step (4\d|5\d)/", cwd=tmp_path)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143 and "Traceback" not in rest and "interrupted" in rest
    assert "stop requested: checkpointing at step" in rest
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.FAIL and "error" not in t.user_attrs
    t0 = time.monotonic()
    again = run_main(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - t0 < 120  # no grace-period wait
    done = [t for t in _study(tmp_path).get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["resumed_from_step"] >= 40


@pytest.mark.parametrize("error", ["oserror", "torch"])
def test_disk_full_is_one_line_and_the_point_resumes_when_space_is_back(
    tmp_path, demo_cache, monkeypatch, capsys, error
):
    """A full disk while Trainer writes a checkpoint: as an OSError, or as torch's
    "[enforce fail at inline_container.cc]" RuntimeError. One line, exit 4, and the point
    resumes at once when space is back (no --retry-failed)."""
    import errno
    import shutil as sh

    from transformers import Trainer

    from optuna_search.search.front._cli import main

    real_save, real_usage = Trainer._save_checkpoint, sh.disk_usage

    def full(self, *a, **kw):
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "optuna-search-demo-checkpoints"))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 998")

    monkeypatch.setattr(Trainer, "_save_checkpoint", full)
    monkeypatch.setattr(sh, "disk_usage", lambda p: real_usage(p)._replace(free=0))
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 4
    err = capsys.readouterr().err
    assert "no space left on device" in err and "Traceback" not in err and "Should not reach" not in err
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.FAIL and "error" not in t.user_attrs  # interrupted, not failed
    monkeypatch.setattr(Trainer, "_save_checkpoint", real_save)
    monkeypatch.setattr(sh, "disk_usage", real_usage)
    assert main(_one_point()) == 0


def test_a_full_disk_while_writing_the_database_is_one_line(tmp_path, demo_cache, monkeypatch, capsys):
    import sqlalchemy

    from optuna_search.search.front._cli import main
    from optuna_search.storage.study import _ledger

    def full(*a, **kw):
        raise sqlalchemy.exc.OperationalError(
            "INSERT INTO trial_user_attributes", {}, Exception("database or disk is full")
        )

    monkeypatch.setattr(_ledger, "set_trial_user_attrs", full)
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 4
    err = capsys.readouterr().err
    assert "no space left on device while writing the study database" in err and "Traceback" not in err


def test_a_diverging_trial_fails_with_its_reason(tmp_path, demo_cache, monkeypatch, capsys):
    """A loss that becomes nan or inf fails the trial with that reason (seen: a learning
    rate of inf trained to loss 0.0, recorded COMPLETE at 0% with 100 parse failures)."""
    from transformers import Trainer

    from optuna_search.search.front._cli import main

    real = Trainer.training_step

    def nan_loss(self, *a, **kw):
        loss = real(self, *a, **kw)
        return loss * float("nan") if self.state.global_step >= 3 else loss

    monkeypatch.setattr(Trainer, "training_step", nan_loss)
    monkeypatch.chdir(tmp_path)
    assert main(_one_point()) == 1
    (t,) = _study(tmp_path).get_trials()
    assert t.state == TrialState.FAIL and "DivergedTraining: the training loss became nan" in t.user_attrs["error"]
    assert "lower the learning rate" in capsys.readouterr().err
