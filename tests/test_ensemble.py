"""Ensembles of trials from their stored predictions alone: soft and hard voting, their
McNemar tests, refusal of members scored on other examples."""

import json
import math
import shutil

import optuna
import pytest
from conftest import run_main

from optuna_search.objectives._ensemble import Member, hard_vote
from optuna_search.objectives._metrics import Prediction

pytestmark = pytest.mark.slow


def _own_copy(work, tmp_path):
    shutil.copytree(work, tmp_path / "study")
    return tmp_path / "study"


def _exact_mcnemar(b: int, c: int) -> float:
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def test_ensemble_from_artifacts_only(scored_study, tmp_path, monkeypatch, capsys):
    import transformers

    from optuna_search.search.front._cli import main

    def no_model(*a, **kw):
        raise AssertionError("an ensemble must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    scored_study = _own_copy(scored_study, tmp_path)  # the ensemble is stored on the study
    monkeypatch.chdir(scored_study)
    assert main(["ensemble", "--preset", "demo", "--all"]) == 0
    out = capsys.readouterr().out
    assert "soft voting: ensemble of lora_r=" in out and "hard voting" in out
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{scored_study / 'optuna-search-demo.db'}")
    ensembles = study.user_attrs["ensembles"]
    assert [e["method"] for e in ensembles] == ["soft", "hard"] and len(ensembles[0]["members"]) == 2
    soft = ensembles[0]
    # The McNemar figures, by hand from the stored predictions (all fields right per example).
    store = optuna.artifacts.FileSystemArtifactStore(str(scored_study / "optuna-search-demo-artifacts"))

    def rows(artifact):
        with store.open_reader(artifact) as fh:
            return {r["id"]: r for r in map(json.loads, fh.read().decode().splitlines())}

    ens = rows(soft["artifact_id"])
    best = rows(next(t for t in study.trials if t.number == soft["trials"][0]).user_attrs["predictions_artifact_id"])
    right = lambda r: all(r["predicted"][f] == r["gold"][f] for f in r["gold"])  # noqa: E731
    only_ens = sum(right(ens[i]) and not right(best[i]) for i in ens)
    only_best = sum(right(best[i]) and not right(ens[i]) for i in ens)
    assert (soft["only_ensemble"], soft["only_best"]) == (only_ens, only_best)
    assert soft["p_vs_best"] == pytest.approx(_exact_mcnemar(only_ens, only_best))
    for r in ens.values():
        for f, dist in r["probs"].items():
            assert sum(dist.values()) == pytest.approx(1.0) and r["predicted"][f] == max(dist, key=dist.get)
    import optuna_dashboard

    assert "ensemble of" in optuna_dashboard.get_note(study)
    rep = run_main("report", "--preset", "demo", "-o", str(scored_study / "rep"), cwd=scored_study)
    assert "## Ensembles" in rep.stdout and "adapters to serve" in rep.stdout
    assert "Reliability diagram" in (scored_study / "rep" / "report.html").read_text()
    assert "## Calibration" in rep.stdout


def test_members_scored_on_other_examples_are_refused(scored_study, tmp_path):
    shutil.copy(scored_study / "optuna-search-demo.db", tmp_path / "copy.db")
    import sqlite3

    con = sqlite3.connect(tmp_path / "copy.db")  # a finished trial cannot be edited through Optuna
    con.execute(
        "UPDATE trial_user_attributes SET value_json = '\"another-set\"' WHERE key = 'eval_ids_sha256' "
        "AND trial_id = (SELECT trial_id FROM trials WHERE number = 1)"
    )
    con.commit()
    con.close()
    proc = run_main(
        "ensemble",
        "--storage",
        f"sqlite:///{tmp_path / 'copy.db'}",
        "--trials",
        "0,1",
        "--set",
        f'storage.artifacts="{scored_study / "optuna-search-demo-artifacts"}"',
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "evaluated on other examples" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--trials", "1,1"], "names a trial twice"),
        (["--trials", "0,7"], "trial(s) 7 are not COMPLETE trials"),
        (["--top", "5"], "give 2 to 2"),
    ],
)
def test_bad_member_choices_are_one_line(scored_study, tmp_path, args, needle):
    shutil.copy(scored_study / "optuna-search-demo.db", tmp_path / "copy.db")
    proc = run_main("ensemble", "--storage", f"sqlite:///{tmp_path / 'copy.db'}", *args, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_ensemble_of_a_study_without_complete_trials_says_so(tmp_path):
    import optuna

    from optuna_search.core import StudyMeta
    from optuna_search.search.front._config import load_config
    from optuna_search.storage.study._records import write_meta

    study = optuna.create_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'e.db'}")
    write_meta(study, StudyMeta(config=load_config(preset="demo").to_dict()))
    proc = run_main("ensemble", "--storage", f"sqlite:///{tmp_path / 'e.db'}", "--top", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "has no complete trial yet" in proc.stderr


def test_generated_members_vote_by_majority_only(demo_study, tmp_path):
    work, _ = demo_study
    shutil.copy(work / "optuna-search-demo.db", tmp_path / "copy.db")
    proc = run_main(
        "ensemble",
        "--storage",
        f"sqlite:///{tmp_path / 'copy.db'}",
        "--top",
        "3",
        "--set",
        f'storage.artifacts="{work / "optuna-search-demo-artifacts"}"',
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "only hard (majority) voting is shown" in proc.stdout and "soft voting:" not in proc.stdout
    assert "members chosen on: validation (top 3)" in proc.stdout


def test_hard_vote_ties_go_to_the_best_member():
    gold = {"f": "a"}
    members = [
        Member(n, i, {"x": Prediction("x", gold, {"f": lab}, "")})
        for i, (n, lab) in enumerate([("best", "b"), ("m2", "c"), ("m3", "a")])
    ]
    assert hard_vote(members, ["x"], ["f"])[0].predicted["f"] == "b"
    members.append(Member("m4", 3, {"x": Prediction("x", gold, {"f": "a"}, "")}))
    assert hard_vote(members, ["x"], ["f"])[0].predicted["f"] == "a"


def test_an_ensemble_of_a_remote_study_is_stored_in_the_remote(scored_study, tmp_path, monkeypatch):
    """Seen: `ensemble --remote` stored the ensemble in this machine's cache only; the
    remote, and every other machine, never got it."""
    from conftest import run_main

    from optuna_search.core import StudyLocation
    from optuna_search.search.remote._remote import reading_location

    remote = tmp_path / "remote"
    assert run_main("export", "--preset", "demo", "--output", str(remote), cwd=scored_study).returncode == 0
    here = tmp_path / "laptop"
    here.mkdir()
    proc = run_main(
        "ensemble",
        "--remote",
        str(remote),
        "--all",
        cwd=here,
        env_extra={"OPTUNA_SEARCH_CACHE": str(tmp_path / "laptop-cache")},
    )
    assert proc.returncode == 0 and "soft voting" in proc.stdout, proc.stderr[-2000:]
    # Another machine, with an empty cache, reads the ensemble from the remote.
    monkeypatch.setenv("OPTUNA_SEARCH_CACHE", str(tmp_path / "other-cache"))
    location = reading_location(StudyLocation(remote=str(remote)))
    study = optuna.load_study(study_name="demo", storage=location.storage_url)
    ensembles = study.user_attrs["ensembles"]
    assert [e["method"] for e in ensembles] == ["soft", "hard"]
    store = optuna.artifacts.FileSystemArtifactStore(location.artifacts_dir)
    with store.open_reader(ensembles[0]["artifact_id"]) as fh:
        assert fh.read()  # its predictions came with it
    assert json.loads((remote / "lease.json").read_text())["heartbeat"] == 0  # the lease released
