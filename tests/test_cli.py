"""Bad input: one clear line naming the problem and the fix, exit code 2, no traceback,
and nothing written to the study."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import GAME_BUGS, run_cli, run_main

LABELS = "Severity: low\nComponent: ui\nReproducibility: rare"


def _write_data(d, train_rows=None):
    d.mkdir(parents=True, exist_ok=True)
    rows = train_rows or [json.dumps({"input": f"report {i}", "output": LABELS}) for i in range(5)]
    (d / "train.jsonl").write_text("\n".join(rows) + "\n")
    for s in ("val", "test"):
        (d / f"{s}.jsonl").write_text(json.dumps({"input": "r", "output": LABELS}) + "\n")


def _args(d, *extra):
    return [
        "run",
        "--preset",
        "demo",
        "--set",
        f'data.train="{d / "train.jsonl"}"',
        "--set",
        f'data.validation="{d / "val.jsonl"}"',
        "--set",
        f'data.test="{d / "test.jsonl"}"',
        "--storage",
        "sqlite:///study.db",
        *extra,
    ]


def _assert_clean_refusal(proc, work, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr
    assert not (work / "study.db").exists(), "a refused run must not create the study database"


@pytest.fixture
def work(tmp_path, demo_cache):
    return tmp_path


def test_missing_data_file(work):
    _write_data(work / "d")
    os.remove(work / "d" / "val.jsonl")
    _assert_clean_refusal(run_main(*_args(work / "d"), cwd=work), work, "data.validation file", "does not exist")


def test_malformed_json_line(work):
    _write_data(work / "d", [json.dumps({"input": "a", "output": LABELS}), '{"input": "b", '])
    _assert_clean_refusal(run_main(*_args(work / "d"), cwd=work), work, "train.jsonl:2: malformed JSON")


def test_row_without_parseable_label(work):
    _write_data(work / "d", [json.dumps({"input": "a", "output": "Severity: low"})])
    _assert_clean_refusal(
        run_main(*_args(work / "d"), cwd=work), work, "train.jsonl:1: no parseable label for component, reproducibility"
    )


def test_label_mismatch_between_train_and_test(work):
    _write_data(work / "d")
    (work / "d" / "test.jsonl").write_text(
        json.dumps({"input": "r", "output": "Severity: minor\nComponent: ui\nReproducibility: rare"}) + "\n"
    )
    _assert_clean_refusal(
        run_main(*_args(work / "d"), cwd=work), work, "severity: test has labels never seen in train: 'minor'"
    )


def test_unknown_config_key(work):
    _assert_clean_refusal(
        run_main("run", "--preset", "demo", "--set", "lora.rank=8", "--storage", "sqlite:///study.db", cwd=work),
        work,
        "unknown key lora.rank",
    )


def test_rank_zero(work):
    _assert_clean_refusal(
        run_main(
            "run", "--preset", "demo", "--set", "study.grid={lora_r=[0,4]}", "--storage", "sqlite:///study.db", cwd=work
        ),
        work,
        "study.grid.lora_r value 0 must be an integer from 1 to 1,024",
    )


def test_bad_config_file(work):
    (work / "c.toml").write_text("[train\nepochs = 3\n")
    _assert_clean_refusal(run_main("run", "--config", str(work / "c.toml"), cwd=work), work, "is not valid TOML")


@pytest.mark.parametrize(
    "url,needle",
    [
        ("sqlite3:///x.db", "is not supported"),
        ("not a url", "is not a database URL"),
        ("sqlite:///no/such/dir/study.db", "does not exist"),
        ("sqlite://", "in-memory"),
    ],
)
def test_bad_storage_url(work, url, needle):
    proc = run_main("run", "--preset", "demo", "--storage", url, cwd=work)
    _assert_clean_refusal(proc, work, needle)


def test_password_never_printed(work):
    proc = run_main("run", "--preset", "demo", "--storage", "mssql://user:hunter2@localhost/db", cwd=work)
    assert proc.returncode == 2 and "hunter2" not in proc.stderr + proc.stdout and "***" in proc.stderr


def test_read_only_database(work):
    db = work / "ro.db"
    import sqlite3

    sqlite3.connect(db).close()
    os.chmod(db, 0o444)
    if os.access(db, os.W_OK):
        pytest.skip("running as a user that can write read-only files (root)")
    proc = run_main("run", "--preset", "demo", "--storage", f"sqlite:///{db}", cwd=work)
    assert proc.returncode == 2 and "read-only" in proc.stderr


def test_read_only_database_check(tmp_path, monkeypatch):
    # Root can write anything, so check the decision itself with access() denied.
    from optuna_search.core import UserError
    from optuna_search.storage.study._storages import check_storage_url

    db = tmp_path / "ro.db"
    db.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(db))
    with pytest.raises(UserError, match="is read-only"):
        check_storage_url(f"sqlite:///{db}")


def test_missing_model_path(work):
    proc = run_main(
        "run",
        "--preset",
        "demo",
        "--set",
        f'model.name_or_path="{work / "nope"}"',
        "--storage",
        "sqlite:///study.db",
        cwd=work,
    )
    _assert_clean_refusal(proc, work, "model.name_or_path", "does not exist")


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom optuna_search.search.front._cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'optuna', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out


def test_show_config_prints_resolved_toml(work):
    proc = run_main("show-config", "--preset", "kaggle-t4", "--set", "train.epochs=1", "--study-name", "x", cwd=work)
    assert proc.returncode == 0
    import tomllib

    cfg = tomllib.loads(proc.stdout)
    assert cfg["train"]["epochs"] == 1 and cfg["study"]["name"] == "x"
    assert cfg["model"]["name_or_path"] == "mistralai/Mistral-7B-Instruct-v0.2"


def test_validate_on_the_real_game_bugs_data(work):
    proc = run_main(
        "validate",
        "--preset",
        "kaggle-t4",
        "--set",
        f'data.train="{GAME_BUGS / "train.jsonl"}"',
        "--set",
        f'data.validation="{GAME_BUGS / "val.jsonl"}"',
        "--set",
        f'data.test="{GAME_BUGS / "val.jsonl"}"',
        "--set",
        "eval.num_samples=0",
        "--set",
        f'model.name_or_path="{_tiny_model_dir()}"',
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    # The README of the data gives the majority baseline on val.jsonl: 50.5 / 73.2 / 80.3 / 68.0.
    assert "severity 50.5%, component 73.2%, reproducibility 80.3%, overall 68.0%" in proc.stdout
    # What the configured model's prompt does to the data.
    assert re.search(
        r"reports truncated: train \d+/1399, validation \d+/299, test \d+/299; longest possible answer \d+ tokens",
        proc.stdout,
    )


def test_a_grid_of_over_a_thousand_points_is_warned_about(work):
    proc = run_main("validate", "--preset", "demo", "--set", f"study.grid={{lora_r={list(range(1, 1002))}}}", cwd=work)
    assert proc.returncode == 0 and "the grid has 1001 points" in proc.stderr


def _tiny_model_dir():
    from optuna_search.objectives._demo import ensure_demo_model

    return ensure_demo_model()


def test_reading_commands_need_only_the_storage_url(demo_study, tmp_path):
    work, proc = demo_study
    assert proc.returncode == 0
    url = f"sqlite:///{work / 'optuna-search-demo.db'}"
    status = run_main("status", "--storage", url, cwd=tmp_path)  # elsewhere, no preset, no study name
    assert status.returncode == 0 and "3/3 grid points complete" in status.stdout, status.stderr
    rep = run_main("report", "--storage", url, "-o", str(tmp_path / "rep"), cwd=tmp_path)
    assert rep.returncode == 0 and "## Performance summary" in rep.stdout, rep.stderr
    assert "invalid configuration" not in rep.stderr and "is not set" not in rep.stderr
    # The study's own config says where its artifacts are (relative to where it ran):
    # from another directory they are not there, and looking creates nothing.
    assert not (tmp_path / "optuna-search-demo-artifacts").exists()
    nosuch = run_main("export", "--storage", url, "--study-name", "nosuch", "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert nosuch.returncode == 2 and "no study 'nosuch'" in nosuch.stderr and "demo" in nosuch.stderr
    assert not (tmp_path / "b").exists()


def test_dashboard_from_the_storage_url_alone(demo_study, tmp_path):
    import socket
    import time
    import urllib.request

    work, _ = demo_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optuna_search.search",
            "dashboard",
            "--storage",
            f"sqlite:///{work / 'optuna-search-demo.db'}",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read())
                break
            except OSError:
                time.sleep(0.3)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["demo"]
    finally:
        proc.kill()
    assert not (tmp_path / "optuna-search-demo-artifacts").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["status", "--storage", ""], "--storage is empty"),
        (["status", "--study-name", ""], "--study-name is empty"),
        (["dashboard", "--port", "99999"], "is not a TCP port"),
        (["dashboard", "--port", "-1"], "is not a TCP port"),
    ],
)
def test_bad_flags_are_one_clear_line(tmp_path, args, needle):
    proc = run_main(*args, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_show_config_masks_the_password(tmp_path):
    proc = run_main("show-config", "--preset", "demo", "--storage", "postgresql://u:S3cret@host/db", cwd=tmp_path)
    assert proc.returncode == 0 and "S3cret" not in proc.stdout and "u:***@host" in proc.stdout


def test_workers_are_capped_at_what_the_machine_has(tmp_path, monkeypatch, caplog):
    from optuna_search.search.loop import _workers

    monkeypatch.setattr(_workers, "visible_gpus", lambda: [])
    monkeypatch.setattr(_workers.os, "cpu_count", lambda: 2)
    assert _workers.choose_workers(1000, 1) == 2 and "capped at 2" in caplog.text
    assert _workers.choose_workers(1000, 1, oversubscribe=True) == 1000
    assert _workers.choose_workers(None, 1) == 1
    monkeypatch.setattr(_workers, "visible_gpus", lambda: ["0", "1"])
    assert _workers.choose_workers(None, 1) == 2 and _workers.choose_workers(8, 2) == 1


def test_a_target_module_the_model_lacks_is_refused_before_the_study_exists(work):
    """Seen: refused only after the study and a trial were written, and the corrected
    rerun was then refused as 'a different meaning'."""
    _assert_clean_refusal(
        run_main(
            "run",
            "--preset",
            "demo",
            "--set",
            "lora.target_modules=q_proj,v_porj",
            "--storage",
            "sqlite:///study.db",
            cwd=work,
        ),
        work,
        "the model has no module named 'v_porj'",
    )


def test_validation_points_beyond_the_steps_of_an_epoch_are_refused(work):
    _assert_clean_refusal(
        run_main(
            "run",
            "--preset",
            "demo",
            "--set",
            "train.validations_per_epoch=500",
            "--storage",
            "sqlite:///study.db",
            cwd=work,
        ),
        work,
        "train.validations_per_epoch = 500 but an epoch has only 150 optimizer steps",
    )


def test_a_tracker_that_is_not_installed_is_refused(work):
    _assert_clean_refusal(
        run_main(
            "run", "--preset", "demo", "--set", "train.report_to=['wandb']", "--storage", "sqlite:///study.db", cwd=work
        ),
        work,
        "the package 'wandb' is not installed",
    )


def test_a_postgresql_url_with_a_port_that_is_not_a_number_is_one_line(work):
    _assert_clean_refusal(
        run_main("run", "--preset", "demo", "--storage", "postgresql://u:pw@localhost:port/db", cwd=work),
        work,
        "port 'port' is not a number",
    )


def test_export_into_an_existing_file_is_one_line(demo_study, tmp_path):
    work, _ = demo_study
    (tmp_path / "taken").write_text("x")
    proc = run_main("export", "--preset", "demo", "--output", str(tmp_path / "taken"), cwd=work)
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_version_levels_and_verbosity(tmp_path):
    from importlib.metadata import version

    out = run_cli("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"optuna-search {version('optuna-search')}"
    warned = run_cli("validate", "--preset", "demo", "--set", "eval.num_samples=1000", cwd=tmp_path)
    assert warned.returncode == 0 and re.search(r"^\d\d:\d\d:\d\d WARNING eval.num_samples = 1000", warned.stderr, re.M)
    assert (
        re.search(r"^\d\d:\d\d:\d\d data ok|^\d\d:\d\d:\d\d [a-z]", warned.stderr, re.M) or "WARNING" in warned.stderr
    )
    quiet = run_main("-q", "validate", "--preset", "demo", cwd=tmp_path)
    assert quiet.returncode == 0 and "INFO" not in quiet.stderr


def test_status_of_a_study_still_running_exits_1_and_of_a_finished_one_0(demo_study, tmp_path):
    work, _ = demo_study
    assert run_main("status", "--preset", "demo", cwd=work).returncode == 0
    shutil.copy(work / "optuna-search-demo.db", tmp_path / "optuna-search-demo.db")
    import sqlite3

    con = sqlite3.connect(tmp_path / "optuna-search-demo.db")  # the last point as if still training
    con.execute("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL WHERE number = 2")
    con.commit()
    con.close()
    proc = run_main("status", "--preset", "demo", cwd=tmp_path)
    assert proc.returncode == 1 and "running" in proc.stdout


def test_reading_a_wal_database_leaves_no_files_behind(demo_study, tmp_path):
    work, _ = demo_study
    shutil.copy(work / "optuna-search-demo.db", tmp_path / "s.db")
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd in (["status"], ["report", "-o", str(tmp_path / "rep")]):
        assert run_cli(*cmd, "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path).returncode == 0
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "rep")
    assert after == before, after


def test_a_grid_with_new_values_for_a_study_is_one_line_and_writes_nothing(demo_study, tmp_path):
    """Seen: changing a study's grid values ended in Optuna's `ValueError:
    CategoricalDistribution does not support dynamic value space` traceback."""
    import hashlib

    work, _ = demo_study
    shutil.copy(work / "optuna-search-demo.db", tmp_path / "optuna-search-demo.db")
    before = hashlib.sha256((tmp_path / "optuna-search-demo.db").read_bytes()).hexdigest()
    proc = run_main("run", "--preset", "demo", "--set", "study.grid={lora_r=[4, 8, 16, 32]}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lora_r adds [32] to the values [4, 8, 16]" in proc.stderr and "--warm-start-from" in proc.stderr
    assert hashlib.sha256((tmp_path / "optuna-search-demo.db").read_bytes()).hexdigest() == before
