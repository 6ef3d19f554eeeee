"""The libraries' known noise is filtered one warning at a time; anything else a library
says (a real peft, bitsandbytes or Optuna problem) still reaches the user."""

import warnings

import optuna
import pytest

from optuna_search.objectives._quiet import quiet_libraries


@pytest.fixture
def quiet():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries()
        yield seen


def test_the_experimental_optuna_features_relied_on_are_quiet(quiet):
    from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["overall_accuracy", "train_seconds"])
    RetryHeartbeatStaleTrialCallback()
    fail_stale_trials(study)  # in-memory storage: nothing to fail, still warns "experimental"
    assert not [w for w in quiet if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


def test_other_experimental_features_and_other_warnings_still_show(quiet):
    optuna.samplers.TPESampler(multivariate=True, group=True)  # `group` is experimental
    warnings.warn("peft: target module not found", UserWarning, stacklevel=2)
    messages = [str(w.message) for w in quiet]
    assert any("``group``" in m for m in messages)
    assert "peft: target module not found" in messages


def test_quieting_imports_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys; from optuna_search.objectives._quiet import quiet_libraries; quiet_libraries(); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_hub_download_progress_stays_on_and_its_retries_stay_off(monkeypatch):
    import os

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_VERBOSITY"):
        monkeypatch.delenv(var, raising=False)
    quiet_libraries()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ  # a 14 GB download shows its progress
    assert os.environ["HF_HUB_VERBOSITY"] == "error"  # ...but not a warning per retry


def test_an_unreachable_hub_is_one_line_at_once(tmp_path, monkeypatch):
    """Seen: a hub id offline printed 22 'Name or service not known' lines over half a
    minute before the final message."""
    import time

    from conftest import run_cli

    t0 = time.monotonic()
    proc = run_cli(
        "validate",
        "--preset",
        "demo",
        "--set",
        'model.name_or_path="someorg/no-such-model"',
        cwd=tmp_path,
        env_extra={"HF_ENDPOINT": "https://no-such-host.invalid", "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert proc.returncode == 2 and time.monotonic() - t0 < 20
    assert "is not in the local Hugging Face cache and the hub cannot be reached (no-such-host.invalid" in proc.stderr
    assert proc.stderr.count("\n") <= 2 and "Retrying" not in proc.stderr, proc.stderr
