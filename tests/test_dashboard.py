"""optuna-dashboard on the project's studies: safe beside a running study, notes, and
what a user sees in a real (headless Chromium) browser."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FAST, hold_env, run_cli, wait_for_holds

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dashboard(cwd: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "optuna_search.search", "dashboard", "--preset", "demo", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Drain its output as it comes: an undrained pipe fills up and blocks the writer.
    proc.output = []
    threading.Thread(target=lambda: proc.output.extend(proc.stdout), daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                time.sleep(0.5)
                raise AssertionError("".join(proc.output)) from None
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("dashboard did not start")


def test_dashboard_beside_a_running_study_breaks_nothing(tmp_path, demo_cache):
    """optuna-dashboard issue 545: a dashboard on a live SQLite study crashed it. The run
    is held inside its trial (its heartbeat writing every second) until the dashboard has
    answered 20 times, then goes on to write its steps, evaluation and result while the
    dashboard is still read: never a race with the run's speed."""
    release = tmp_path / "release"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optuna_search.search",
            "run",
            *FAST,
            "--set",
            "study.grid={lora_r=[4]}",
            "--set",
            "storage.heartbeat_interval=1",
            "--progress-interval",
            "0",
        ],
        cwd=tmp_path,
        env={**hold_env(r" step 2/"), "OPTUNA_SEARCH_TEST_HOLD_RELEASE": str(release)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held = wait_for_holds(run)
    port = _free_port()
    dash = _start_dashboard(tmp_path, port)
    polls, errors, running = 0, [], False
    try:
        while run.poll() is None:
            for path in ("/api/studies", "/api/studies/1?after=0"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                        assert r.status == 200
                        body = json.loads(r.read())
                        polls += 1
                        running |= '"state": "Running"' in json.dumps(body)
                except Exception as e:
                    errors.append(repr(e))
            if polls >= 20 and not release.exists():
                release.touch()  # seen mid-trial 20 times: let the run write the rest
            time.sleep(0.2)
        _out, err = run.communicate()
    finally:
        dash.kill()
        dash.wait()
        time.sleep(0.5)
        dash_out = "".join(dash.output)
    err = "".join(held) + err
    assert run.returncode == 0, err[-3000:]
    assert "database is locked" not in err + dash_out
    assert polls >= 20 and release.exists() and running and not errors, errors[:3]
    assert "Listening on http://127.0.0.1:" in dash_out  # loopback only by default


def test_dashboard_refuses_a_missing_study_database(tmp_path):
    proc = run_cli("dashboard", "--preset", "demo", "--port", str(_free_port()), cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_optuna_cli_reads_the_study(demo_study):
    work, _ = demo_study
    optuna_cli = Path(sys.executable).parent / "optuna"
    storage = f"sqlite:///{work / 'optuna-search-demo.db'}"
    trials = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", "demo", "--storage", storage, "-f", "json"],
        capture_output=True,
        text=True,
    )
    assert trials.returncode == 0, trials.stderr
    rows = json.loads(trials.stdout)
    assert sorted(r["params"]["lora_r"] for r in rows) == [4, 8, 16]
    best = subprocess.run(
        [str(optuna_cli), "best-trial", "--study-name", "demo", "--storage", storage, "-f", "json"],
        capture_output=True,
        text=True,
    )
    # The objective is named in the storage, so the CLI reports it by name.
    assert best.returncode == 0
    assert json.loads(best.stdout)["value"]["overall_accuracy"] == max(r["value"]["overall_accuracy"] for r in rows)


def test_trial_notes_hold_the_finished_trial(demo_study):
    """The note is written after the trial's scores: it shows them and the effective
    configuration, not the attrs the trial had when it was asked (checked without a
    browser, so it holds where chromium is absent)."""
    import optuna
    import optuna_dashboard

    work, _ = demo_study
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    by_r = {t.params["lora_r"]: t for t in study.trials}
    note = optuna_dashboard.get_note(optuna.Trial(study, by_r[4]._trial_id))
    assert note.startswith("## Trial 0: lora_r=4")
    assert "95% CI (Wilson)" in note and "| lora_r | 4 |" in note and "| lora_alpha | 16 |" in note
    assert "balanced accuracy" in note and "| optim | adamw_torch |" in note
    assert "None" not in note.split("### Environment")[0]


def wait_text(page, text: str) -> None:
    try:
        page.wait_for_function("t => document.body.innerText.includes(t)", arg=text, timeout=30000)
    except Exception as e:
        raise AssertionError(f"{text!r} not shown; the page says:\n{page.inner_text('body')[:2000]}") from e


def test_notes_in_a_real_browser(demo_study, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("python package playwright is not installed (.ci/run installs it)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    work, _ = demo_study
    port = _free_port()
    dash = _start_dashboard(work, port)
    shots = Path(os.environ.get("OPTUNA_SEARCH_SCREENSHOTS", tmp_path))
    try:
        with sync_playwright() as p:
            try:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM,
                    args=[
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--no-first-run",
                        "--disable-quic",
                    ],
                )
            except Exception as e:
                pytest.skip(f"chromium cannot start here: {e}")
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="networkidle")
            wait_text(page, "Direction: MAXIMIZE")
            assert "demo" in page.inner_text("body")
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/1/trials", wait_until="networkidle")
            wait_text(page, "Effective configuration")
            text = page.inner_text("body")
            assert "3 Trials" in text and "Trial 2" in text
            assert "severity_accuracy" in text
            assert "Trial 0: lora_r=4" in text and "95% CI (Wilson)" in text and "bitsandbytes" in text
            page.screenshot(path=str(shots / "dashboard-trial-note.png"))
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/1/note", wait_until="networkidle")
            wait_text(page, "Every row is scored on the same 100 test examples")
            assert "baseline: majority" in page.inner_text("body")
            browser.close()
    finally:
        dash.kill()
    assert (shots / "dashboard-trial-note.png").stat().st_size > 10_000


def test_a_host_that_is_not_an_address_is_named_as_such(tmp_path):
    proc = run_cli("dashboard", "--preset", "demo", "--host", "not a host!", cwd=tmp_path)
    assert (
        proc.returncode == 2 and "--host 'not a host!' is not an address" in proc.stderr and "port" not in proc.stderr
    )
