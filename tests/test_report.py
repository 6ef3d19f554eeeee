"""The study report on a finished demo study, and on studies with failed/running trials."""

import shutil
from html.parser import HTMLParser

import optuna
import pytest
from conftest import run_main
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from optuna_search.core import StudyLocation, UserError
from optuna_search.dashboards._report import collect_report, render_markdown
from optuna_search.search.setup._open import study_config
from optuna_search.storage.study._artifacts import artifact_store

pytestmark = pytest.mark.slow


def test_report_fills_every_table_of_the_plan(demo_study, tmp_path):
    work, _ = demo_study
    proc = run_main("report", "--preset", "demo", "--output", str(tmp_path / "rep"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md == proc.stdout.rstrip("\n") + "\n" or md.strip() == proc.stdout.strip()
    for section in (
        "## Performance summary",
        "## Macro-F1 and balanced accuracy",
        "## Training loss per epoch",
        "## Overfitting analysis",
        "## Inference speed",
        "## Significance",
        "## Recommendation",
    ):
        assert section in md
    for row in (
        "| lora_r=4 |",
        "| lora_r=8 |",
        "| lora_r=16 |",
        "| baseline: majority |",
        "| baseline: tfidf_logreg |",
    ):
        assert row in md
    assert "DEMO study" in md and "Best by the plan's criteria" in md
    # Beside the baselines the recommendation takes a position, never silence.
    assert "majority baseline" in md and "tfidf_logreg baseline" in md

    html = (tmp_path / "rep" / "report.html").read_text()

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.divs, self.remote_scripts = [], 0, 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "div" and a.get("class") == "chart":
                self.divs += 1
            if tag == "script" and (a.get("src") or "").startswith("http"):
                self.remote_scripts += 1

    c = Checker()
    c.feed(html)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert c.remote_scripts == 0 and html.count("plotly.js v") <= 2  # self-contained: plotly.js inlined once
    assert c.divs == html.count("Plotly.newPlot") >= 10
    for title in (
        "Confusion matrix, severity",
        "Optimization History Plot",
        "Intermediate Values Plot",
        "Timeline Plot",
        "Parallel Coordinate Plot",
    ):
        assert title in html, title  # Optuna's own figures where Optuna has one
    assert "Holm" in md  # three configurations: three pairwise tests, corrected


def test_baselines_are_scored_on_the_trials_ids(demo_study):
    work, _ = demo_study
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    ids = {s["id"] for s in study.user_attrs["eval_subset"]}
    for name, preds in study.user_attrs["baseline_predictions"].items():
        assert set(preds) == ids, name
    assert set(study.user_attrs["baselines"]) == {"majority", "tfidf_logreg"}


def _copy(work, tmp_path):
    shutil.copy(work / "optuna-search-demo.db", tmp_path / "s.db")
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 's.db'}")


def test_report_shows_failed_and_running_trials(demo_study, tmp_path):
    work, _ = demo_study
    study = _copy(work, tmp_path)
    dist = {"lora_r": CategoricalDistribution([4, 8, 16])}
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"lora_r": 8},
            distributions=dist,
            user_attrs={"error": "OutOfMemoryError: CUDA out of memory"},
        )
    )
    study.ask({"lora_r": CategoricalDistribution([4, 8, 16])})  # a RUNNING trial
    rep = collect_report(study, _config(study), artifact_store(work / "optuna-search-demo-artifacts"))
    md = render_markdown(rep)
    assert "fail: OutOfMemoryError" in md and "running" in md
    assert rep.best is not None


def test_comparing_trials_on_different_eval_sets_is_refused(demo_study, tmp_path):
    work, _ = demo_study
    study = _copy(work, tmp_path)
    study.add_trial(
        create_trial(
            value=0.5,
            params={"lora_r": 8},
            distributions={"lora_r": CategoricalDistribution([4, 8, 16])},
            user_attrs={"eval_ids_sha256": "another-set", "severity_accuracy": 0.5},
        )
    )
    with pytest.raises(UserError, match="different example sets"):
        collect_report(study, _config(study), artifact_store(work / "optuna-search-demo-artifacts"))


def _config(study):
    return study_config(study, StudyLocation())


def test_holm_adjustment_by_hand():
    from optuna_search.objectives._stats import holm

    # Sorted p: 0.01, 0.02, 0.04 -> 3 * 0.01, 2 * 0.02, 1 * 0.04, made non-decreasing.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_report_output_that_is_a_file_is_one_line(demo_study, tmp_path):
    work, _ = demo_study
    (tmp_path / "taken").write_text("x")
    proc = run_main("report", "--preset", "demo", "--output", str(tmp_path / "taken"), cwd=work)
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unreadable_artifact_is_a_warning_naming_the_trial_and_what_it_leaves_out(scored_study, tmp_path):
    """Seen: a prediction artifact that could not be read made the trial's significance tests
    vanish from the report without a word."""
    work = tmp_path / "study"
    shutil.copytree(scored_study, work)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    first = next(t for t in study.get_trials() if t.state == TrialState.COMPLETE)
    artifact = first.user_attrs["predictions_artifact_id"]
    (work / "optuna-search-demo-artifacts" / artifact).write_bytes(b"\xff\xfe not JSON")
    proc = run_main("report", "--preset", "demo", "--output", "r", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"trial {first.number}: its test predictions cannot be read" in proc.stderr
    assert "left out: its significance tests" in proc.stderr
