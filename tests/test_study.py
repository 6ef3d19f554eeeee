"""The demo study end to end through the real CLI: the README's main job."""

import optuna
import pytest
from conftest import run_main
from optuna.trial import TrialState

pytestmark = pytest.mark.slow


def _study(work):
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")


def test_demo_runs_the_full_grid_and_says_where_it_stands_against_the_baselines(demo_study):
    work, proc = demo_study
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(work)
    trials = study.get_trials()
    assert sorted(t.params["lora_r"] for t in trials) == [4, 8, 16]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # alpha follows r, and the trainable parameters grow with it (measured, not assumed).
    by_r = {t.params["lora_r"]: t for t in trials}
    assert [by_r[r].user_attrs["lora_alpha"] for r in (4, 8, 16)] == [16, 32, 64]
    tp = [by_r[r].user_attrs["trainable_params"] for r in (4, 8, 16)]
    assert tp[1] == 2 * tp[0] and tp[2] == 2 * tp[1]
    best = study.best_trial
    # Whether the best beats the majority baseline is the CPU's business; the summary must
    # say it as the stored numbers have it.
    beats = best.value > study.user_attrs["baselines"]["majority"]["overall"]
    assert (
        "best beats the majority-class baseline" if beats else "best does NOT beat the majority-class baseline"
    ) in proc.stdout
    # The summary names the gap to the TF-IDF baseline, computed from the stored numbers
    # (the trained accuracies themselves differ between CPUs: bitsandbytes' kernels take
    # another path without AVX-512, so no trained number is asserted here).
    import re

    m = re.search(
        r"best vs the TF-IDF \+ logistic regression baseline \((\d+\.\d)% overall\): ([+-]\d+\.\d) points", proc.stdout
    )
    assert m, proc.stdout
    tfidf = study.user_attrs["baselines"]["tfidf_logreg"]["overall"]
    assert float(m.group(1)) == round(100 * tfidf, 1)
    assert float(m.group(2)) == pytest.approx(100 * (best.value - tfidf), abs=0.051)
    assert "DEMO" in proc.stdout and "tiny" in proc.stdout


def test_a_run_over_part_of_the_grid_names_the_studys_best_as_every_command_does(demo_study):
    """Seen: `run --set 'study.grid={lora_r=[4]}'` on the finished demo printed "best:
    lora_r=4" while status and predict used the study's best. One best everywhere, and
    the run says what else the study holds."""
    import re

    work, _ = demo_study
    best = _study(work).best_trial
    others = sorted({4, 8, 16} - {best.params["lora_r"]})
    part = run_main("run", "--preset", "demo", "--set", f"study.grid={{lora_r=[{others[0]}]}}", cwd=work)
    assert part.returncode == 0, part.stderr[-2000:]
    assert len(_study(work).get_trials()) == 3  # nothing ran
    named = re.search(r"^best: lora_r=(\d+) \(trial (\d+)\)", part.stdout, re.M)
    assert named and int(named.group(1)) == best.params["lora_r"] and int(named.group(2)) == best.number, part.stdout
    assert "the study also holds 2 finished points outside this run's grid" in part.stdout
    status = run_main("status", "--preset", "demo", cwd=work)
    assert f"lora_r={best.params['lora_r']}" in status.stdout.split("best")[-1], status.stdout


def test_the_commands_the_demo_summary_suggests_find_its_study(demo_study):
    # The demo's study is not in the default storage: the suggested follow-up commands
    # carry its --storage/--study-name, so they work pasted as printed.
    import shlex

    work, proc = demo_study
    line = next(x for x in proc.stdout.splitlines() if x.startswith("significance tests and the recommendation: "))
    cmd = shlex.split(line.split(": ", 1)[1])
    assert cmd[:2] == ["optuna-search", "report"] and "--storage" in cmd
    report = run_main(*cmd[1:], "--output", "suggested-report", cwd=work)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "## Recommendation" in report.stdout


def test_results_go_to_stdout_and_progress_to_stderr(demo_study):
    _work, proc = demo_study
    header = next(x for x in proc.stdout.splitlines() if x.startswith("grid point"))
    for col in ("alpha", "sev", "comp", "repro", "overall", "train_loss", "eval_loss", "trainable", "min"):
        assert col in header
    assert "baseline: majority" in proc.stdout
    assert "[trial 0, point 1/3, lora_r=4]" in proc.stderr and "ETA" in proc.stderr and "epoch" in proc.stderr
    assert "[trial" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_trials_record_the_documented_user_attrs(demo_study):
    work, _ = demo_study
    for t in _study(work).get_trials():
        ua = t.user_attrs
        for key in (
            "severity_accuracy",
            "component_accuracy",
            "reproducibility_accuracy",
            "parse_failures",
            "lora_alpha",
            "trainable_params",
            "train_loss_per_epoch",
            "eval_loss_per_epoch",
            "train_seconds",
            "eval_seconds",
            "eval_examples_per_second",
            "peak_memory_mb",
        ):
            assert key in ua, key
        assert len(ua["train_loss_per_epoch"]) == len(ua["eval_loss_per_epoch"]) == 3
        assert sorted(t.intermediate_values) == [1, 2, 3]
        acc = [ua[f"{f}_accuracy"] for f in ("severity", "component", "reproducibility")]
        assert t.value == pytest.approx(sum(acc) / 3)
        assert ua["eval_examples"] == 100


def test_every_trial_evaluates_the_same_stored_ids(demo_study):
    work, _ = demo_study
    study = _study(work)
    subset = study.user_attrs["eval_subset"]
    assert len(subset) == 100
    digests = {t.user_attrs["eval_ids_sha256"] for t in study.get_trials()}
    assert len(digests) == 1
    store = optuna.artifacts.FileSystemArtifactStore(str(work / "optuna-search-demo-artifacts"))
    import json

    for t in study.get_trials():
        with store.open_reader(t.user_attrs["predictions_artifact_id"]) as fh:
            ids = [json.loads(line)["id"] for line in fh.read().decode().splitlines()]
        assert ids == [s["id"] for s in subset]


def test_rerunning_a_finished_study_adds_no_trials(demo_study):
    work, _ = demo_study
    before = len(_study(work).get_trials())
    proc = run_main("run", "--preset", "demo", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to run" in proc.stdout
    assert len(_study(work).get_trials()) == before


def test_resuming_with_a_config_that_changes_trial_meaning_is_refused(demo_study):
    work, _ = demo_study
    before = len(_study(work).get_trials())
    proc = run_main(
        "run", "--preset", "demo", "--set", "train.learning_rate=1e-3", "--set", "eval.num_samples=50", cwd=work
    )
    assert proc.returncode == 2
    assert "train.learning_rate: study has 0.005, config has 0.001" in proc.stderr
    assert "eval.num_samples" in proc.stderr and "Traceback" not in proc.stderr
    assert len(_study(work).get_trials()) == before


def test_study_stores_its_config_for_the_dashboard(demo_study):
    work, _ = demo_study
    ua = _study(work).user_attrs
    assert ua["config"]["model"]["name_or_path"] == "builtin:tiny-mistral"
    assert "[lora]" in ua["config_toml"]
    assert _study(work).metric_names == ["overall_accuracy"]


def test_status_shows_every_point_without_importing_torch(demo_study):
    import subprocess
    import sys

    work, _ = demo_study
    code = (
        "import sys\nfrom optuna_search.search.front._cli import main\nrc = main(['-q', 'status', '--preset', 'demo'])\n"
        "print('RC', rc, 'TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True)
    assert "RC 0 TORCH False" in out.stdout, out.stderr
    assert "3/3 grid points complete" in out.stdout
    for r in ("lora_r=4", "lora_r=8", "lora_r=16"):
        assert r in out.stdout
