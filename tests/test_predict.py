"""From the study's chosen trial to labels for new reports: `predict` gives the measured
model's answers (the trial's own stored predictions, to 1e-5), `export-model` makes a
folder that predicts the same without the study, `--ensemble` soft-votes the stored
ensemble on one base model; outputs resume after a kill; bad rows and bad requests are
one line each."""

import json
import shutil

import optuna
import pytest
from conftest import run_main

from optuna_search.objectives._demo_data import ensure_demo_data

pytestmark = pytest.mark.slow
FIELDS = ["severity", "component", "reproducibility"]


def _stored(work, trial_number, name="predictions_artifact_id"):
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    store = optuna.artifacts.FileSystemArtifactStore(str(work / "optuna-search-demo-artifacts"))
    t = next(t for t in study.trials if t.number == trial_number)
    with store.open_reader(t.user_attrs[name]) as fh:
        return {r["id"]: r for r in map(json.loads, fh.read().decode().splitlines())}


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same(predicted, stored):
    assert stored and set(stored) <= set(predicted)
    for i, s in stored.items():
        p = predicted[i]
        assert p["labels"] == s["predicted"], i
        for f in FIELDS:
            for label, prob in s["probs"][f].items():
                assert p["probs"][f][label] == pytest.approx(prob, abs=1e-5), (i, f, label)


def test_predict_gives_the_measured_models_answers_and_export_model_the_same_without_the_study(scored_study, tmp_path):
    work = scored_study
    test_file = ensure_demo_data() / "test.jsonl"
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    best = study.best_trial.number
    out = tmp_path / "pred.jsonl"
    proc = run_main("predict", "--preset", "demo", "--input", str(test_file), "--output", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows/s" in proc.stderr and "ETA" in proc.stderr and "Traceback" not in proc.stderr
    rows = _read(out)
    assert (
        len(rows) == 150 and rows[0]["id"] == "demo-test-0000" and "output" in rows[0]
    )  # other columns passed through
    _assert_same({r["id"]: r for r in rows}, _stored(work, best))
    provenance = json.loads((tmp_path / "pred.jsonl.provenance.json").read_text())
    assert provenance["model"]["trials"] == [best] and provenance["members"][0]["sha256"]

    model_dir = tmp_path / "model"
    exported = run_main("export-model", "--preset", "demo", "--output", str(model_dir), cwd=work)
    assert exported.returncode == 0, exported.stderr[-3000:]
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "optuna-search-model.json",
        "README.md",
    ):
        assert (model_dir / f).is_file(), f
    card = (model_dir / "README.md").read_text()
    for needle in ("95% CI (Wilson)", "McNemar p", "baseline", "licence", "optuna-search predict --model", "SHA-256"):
        assert needle in card, needle
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    again = run_main(
        "predict", "--model", str(model_dir), "--input", str(test_file), "--output", str(fresh / "p.csv"), cwd=fresh
    )
    assert again.returncode == 0, again.stderr[-3000:]
    import csv

    with open(fresh / "p.csv", newline="") as fh:
        csv_rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert not list(fresh.glob("*.db"))
    assert {i: {f: r[f] for f in FIELDS} for i, r in csv_rows.items()} == {r["id"]: r["labels"] for r in rows}

    from peft import AutoPeftModelForCausalLM

    assert (
        AutoPeftModelForCausalLM.from_pretrained(str(model_dir)).peft_config["default"].r
        == study.best_trial.params["lora_r"]
    )


def test_predict_resumes_after_a_kill_and_reports_bad_rows(scored_study, tmp_path):
    work = scored_study
    rows = [json.loads(line) for line in (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:12]]
    inp = tmp_path / "in.jsonl"
    lines = (
        [json.dumps(r) for r in rows[:5]]
        + ["{not json", json.dumps({"id": "no-text"})]
        + [json.dumps(r) for r in rows[5:]]
    )
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    strict = run_main("predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--on-bad-row", "fail", cwd=work)
    assert strict.returncode == 2 and f"{inp}:6: not JSON" in strict.stderr and "Traceback" not in strict.stderr
    first = run_main("predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--batch-size", "4", cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "skipped 2 bad rows" in first.stdout and f"{inp}:7: no text in column 'input'" in first.stderr
    complete = out.read_text().splitlines()
    assert len(complete) == 12
    # A kill in the middle of a write: four whole lines and half of the fifth.
    out.write_text("\n".join(complete[:4]) + "\n" + complete[4][:20])
    again = run_main("predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--batch-size", "4", cwd=work)
    assert again.returncode == 0 and "(4 already there from an earlier run)" in again.stdout
    resumed = out.read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in resumed) == sorted(r["id"] for r in rows)
    assert [json.loads(line)["labels"] for line in resumed] == [json.loads(line)["labels"] for line in complete]


def test_ensemble_predictions_equal_the_stored_ensemble(scored_study, tmp_path):
    shutil.copytree(scored_study, tmp_path / "s", ignore=shutil.ignore_patterns("rep"))
    work = tmp_path / "s"
    assert run_main("ensemble", "--preset", "demo", "--all", cwd=work).returncode == 0
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    soft = next(e for e in study.user_attrs["ensembles"] if e["method"] == "soft")
    store = optuna.artifacts.FileSystemArtifactStore(str(work / "optuna-search-demo-artifacts"))
    with store.open_reader(soft["artifact_id"]) as fh:
        stored = {r["id"]: r for r in map(json.loads, fh.read().decode().splitlines())}
    out = tmp_path / "e.jsonl"
    proc = run_main(
        "predict",
        "--preset",
        "demo",
        "--ensemble",
        "-i",
        str(ensure_demo_data() / "test.jsonl"),
        "-o",
        str(out),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same({r["id"]: r for r in _read(out)}, stored)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--trial", "99"], "has no trial 99"),
        (["--trial", "one"], "must be 'best' or a trial number"),
        (["--ensemble"], "has no stored soft-voting ensemble"),
        (["--model", "."], "is not a model exported by optuna-search"),
        (["--output", "missing-folder/p.jsonl"], "does not exist; create it first"),
    ],
)
def test_bad_predict_requests_are_one_line(scored_study, tmp_path, args, needle):
    shutil.copy(scored_study / "optuna-search-demo.db", tmp_path / "optuna-search-demo.db")
    base = ["predict", "--preset", "demo", "--input", str(ensure_demo_data() / "test.jsonl")]
    if "--output" not in args:
        base += ["--output", str(tmp_path / "p.jsonl")]
    if "--model" in args:
        base = [a for a in base if a not in ("--preset", "demo")]
    proc = run_main(*base, *args, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_pruned_or_failed_trial_cannot_be_exported(scored_study, tmp_path):
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    shutil.copy(scored_study / "optuna-search-demo.db", tmp_path / "optuna-search-demo.db")
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'optuna-search-demo.db'}")
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED, params={"lora_r": 8}, distributions={"lora_r": CategoricalDistribution([4, 8])}
        )
    )
    n = len(study.trials) - 1
    proc = run_main(
        "export-model", "--preset", "demo", "--trial", str(n), "--output", str(tmp_path / "m"), cwd=tmp_path
    )
    assert (
        proc.returncode == 2 and f"trial {n} is PRUNED, not COMPLETE" in proc.stderr and not (tmp_path / "m").exists()
    )


def test_an_export_whose_base_is_gone_names_where_it_looked(scored_study, tmp_path):
    model_dir = tmp_path / "model"
    assert run_main("export-model", "--preset", "demo", "--output", str(model_dir), cwd=scored_study).returncode == 0
    spec = json.loads((model_dir / "optuna-search-model.json").read_text())
    spec["base"]["name_or_path"] = str(tmp_path / "no-such-base")
    (model_dir / "optuna-search-model.json").write_text(json.dumps(spec))
    proc = run_main(
        "predict",
        "--model",
        str(model_dir),
        "-i",
        str(ensure_demo_data() / "test.jsonl"),
        "-o",
        str(tmp_path / "p.jsonl"),
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "the base model cannot be found" in proc.stderr and "no-such-base" in proc.stderr


def test_merge_writes_a_plain_model_that_answers_like_the_adapter(scored_study, tmp_path):
    """--merge: the adapter merged into the dequantised base, in fp16, loadable with plain
    AutoModelForCausalLM; its greedy answer to a report is the adapter's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "model"
    proc = run_main("export-model", "--preset", "demo", "--output", str(model_dir), "--merge", cwd=scored_study)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged model" in proc.stdout and "MiB in" in proc.stdout
    merged = AutoModelForCausalLM.from_pretrained(str(model_dir / "merged"))
    assert merged.dtype == torch.float16 and not hasattr(merged, "peft_config")
    tok = AutoTokenizer.from_pretrained(str(model_dir / "merged"))
    assert tok.chat_template  # the prompt's template travels with it


def test_a_resumed_output_must_come_from_the_same_model(scored_study, tmp_path):
    """Seen: `predict --output p.jsonl` with the best trial, then the same output with
    another --trial: 'wrote 0 predictions', exit 0, and the provenance renamed to the
    other trial while every row came from the first."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(line + "\n" for line in (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:3]))
    out = tmp_path / "p.jsonl"
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{scored_study / 'optuna-search-demo.db'}")
    best, other = study.best_trial.number, next(t.number for t in study.trials if t.number != study.best_trial.number)
    first = run_main(
        "predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--trial", str(best), cwd=scored_study
    )
    assert first.returncode == 0, first.stderr[-2000:]
    sidecar = (tmp_path / "p.jsonl.provenance.json").read_text()
    again = run_main(
        "predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--trial", str(other), cwd=scored_study
    )
    assert (
        again.returncode == 2
        and "holds predictions of another model" in again.stderr
        and "Traceback" not in again.stderr
    )
    assert (tmp_path / "p.jsonl.provenance.json").read_text() == sidecar  # never rewritten
    same = run_main(
        "predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--trial", str(best), cwd=scored_study
    )
    assert same.returncode == 0 and "(3 already there from an earlier run)" in same.stdout


def test_no_usable_row_is_an_error_that_names_the_column(scored_study, tmp_path):
    """Seen: a CSV with `text` instead of `input`: 'skipped 2 bad rows', exit 0, an empty
    output; an empty input also exited 0."""
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,text\na,The game crashes\nb,Audio stutters\n")
    proc = run_main("predict", "--preset", "demo", "-i", str(csv_in), "-o", str(tmp_path / "p.jsonl"), cwd=scored_study)
    assert (
        proc.returncode == 2
        and "no row has text in column 'input'" in proc.stderr
        and "data.input_column" in proc.stderr
    )
    # Refused: nothing written (seen: an empty output and a provenance file were left).
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "p.jsonl.provenance.json").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_main("predict", "--preset", "demo", "-i", str(empty), "-o", str(tmp_path / "q.jsonl"), cwd=scored_study)
    assert proc.returncode == 2 and "has no rows" in proc.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty.jsonl", "in.csv"]


def test_repeated_ids_resume_by_row_position(scored_study, tmp_path):
    """Seen: 600 rows whose 40 ids repeat, killed after 128 lines, run again: 'wrote 0
    predictions (600 already there)', exit 0, 472 rows missing."""
    rows = [json.loads(line) for line in (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:15]]
    for i, r in enumerate(rows):
        r["id"] = f"dup-{i % 4}"  # four ids, repeated
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    first = run_main(
        "predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--batch-size", "4", cwd=scored_study
    )
    assert first.returncode == 0, first.stderr[-2000:]
    complete = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in complete] == [r["id"] for r in rows]
    out.write_text("\n".join(complete[:6]) + "\n" + complete[6][:15])  # killed: 6 whole lines
    again = run_main(
        "predict", "--preset", "demo", "-i", str(inp), "-o", str(out), "--batch-size", "4", cwd=scored_study
    )
    assert again.returncode == 0 and "wrote 9 predictions" in again.stdout and "(6 already there" in again.stdout
    assert out.read_text().splitlines() == complete
    # An output begun on another input is refused, not silently "resumed".
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "id": f"x{i}"}) + "\n" for i, r in enumerate(rows)))
    out.write_text("\n".join(complete[:6]) + "\n")
    refused = run_main("predict", "--preset", "demo", "-i", str(other), "-o", str(out), cwd=scored_study)
    assert refused.returncode == 2 and "does not continue this input" in refused.stderr
    assert "'dup-0'" in refused.stderr and "'x0'" in refused.stderr and len(out.read_text().splitlines()) == 6


def test_an_output_begun_on_another_input_is_refused_whatever_its_ids(scored_study, tmp_path):
    """Seen: without an id column (ids are row numbers), `predict -i a.jsonl -o o.jsonl` then
    `predict -i b.jsonl -o o.jsonl` exited 0 with a's predictions under b's ids. Each row's
    text is checked against its digest beside the output, so ids that agree prove nothing."""
    texts = [json.loads(line)["input"] for line in (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:8]]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"input": t}) + "\n" for t in texts[:4]))
    b.write_text("".join(json.dumps({"input": t}) + "\n" for t in texts[4:]))
    out = tmp_path / "o.jsonl"
    first = run_main("predict", "--preset", "demo", "-i", str(a), "-o", str(out), cwd=scored_study)
    assert first.returncode == 0, first.stderr[-2000:]
    before = out.read_text()
    refused = run_main("predict", "--preset", "demo", "-i", str(b), "-o", str(out), cwd=scored_study)
    assert refused.returncode == 2 and "does not continue this input" in refused.stderr, refused.stderr[-2000:]
    assert "another text" in refused.stderr and out.read_text() == before
    # The same input goes on; repeated ids with other texts are refused just the same.
    again = run_main("predict", "--preset", "demo", "-i", str(a), "-o", str(out), cwd=scored_study)
    assert again.returncode == 0 and "(4 already there" in again.stdout and out.read_text() == before
    same_ids = tmp_path / "same-ids.jsonl"
    same_ids.write_text("".join(json.dumps({"id": str(i + 1), "input": t}) + "\n" for i, t in enumerate(texts[4:])))
    refused = run_main("predict", "--preset", "demo", "-i", str(same_ids), "-o", str(out), cwd=scored_study)
    assert refused.returncode == 2 and "another text" in refused.stderr


def test_the_output_is_synced_after_every_batch(scored_study, tmp_path, monkeypatch):
    """Seen: synced every 16 batches, so with --batch-size 50 a kill after 20 s kept 0 rows.
    Here the third batch is interrupted: the first two are in the file."""
    from optuna_search.search.use import _predict

    rows = (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:12]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(line + "\n" for line in rows))
    real, calls = _predict.Predictor._predict, []

    def interrupted_at_the_third(self, examples, extras):
        calls.append(len(examples))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, examples, extras)

    monkeypatch.setattr(_predict.Predictor, "_predict", interrupted_at_the_third)
    proc = run_main(
        "predict",
        "--preset",
        "demo",
        "-i",
        str(inp),
        "-o",
        str(tmp_path / "p.jsonl"),
        "--batch-size",
        "3",
        cwd=scored_study,
    )
    assert proc.returncode != 0 and calls == [3, 3, 3]
    assert [json.loads(line)["id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == [
        json.loads(r)["id"] for r in rows[:6]
    ]


def test_invalid_utf8_is_a_bad_row_and_csv_keeps_the_other_columns(scored_study, tmp_path):
    rows = [json.loads(line) for line in (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:2]]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(
        json.dumps(rows[0]).encode()
        + b"\n"
        + b'{"id": "x", "input": "caf\xe9"}\n'
        + json.dumps(rows[1]).encode()
        + b"\n"
    )
    out = tmp_path / "p.csv"
    proc = run_main("predict", "--preset", "demo", "-i", str(inp), "-o", str(out), cwd=scored_study)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{inp}:2: not UTF-8 text (byte" in proc.stderr and "skipped 1 bad rows" in proc.stdout
    import csv

    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["id"] for r in got] == [rows[0]["id"], rows[1]["id"]]
    assert got[0]["output"] == rows[0]["output"] and set(FIELDS) <= set(got[0])  # passed through, as in JSONL


def test_a_read_only_output_folder_is_one_line(scored_study, tmp_path, monkeypatch):
    """Seen: OSError [Errno 30] tracebacks (exit 1) from predict and export-model."""
    import builtins
    import errno

    real_open = builtins.open

    def read_only(path, mode="r", *a, **kw):
        if str(path).startswith(str(tmp_path / "ro")) and any(c in mode for c in "wax"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(builtins, "open", read_only)
    proc = run_main(
        "predict",
        "--preset",
        "demo",
        "-i",
        str(ensure_demo_data() / "test.jsonl"),
        "-o",
        str(tmp_path / "ro" / "p.jsonl"),
        cwd=scored_study,
    )
    assert proc.returncode == 2 and "Read-only file system" in proc.stderr and "Traceback" not in proc.stderr
    real_mkdir = type(tmp_path).mkdir
    monkeypatch.setattr(
        type(tmp_path),
        "mkdir",
        lambda self, *a, **kw: (
            (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system", str(self)))
            if str(self).startswith(str(tmp_path / "ro"))
            else real_mkdir(self, *a, **kw)
        ),
    )
    proc = run_main("export-model", "--preset", "demo", "-o", str(tmp_path / "ro" / "m"), cwd=scored_study)
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_answers_outside_the_label_set_are_null_with_the_raw_answer(scored_study, monkeypatch):
    """Seen: a generated severity word under component written as the component label."""
    from optuna_search.objectives import Prediction
    from optuna_search.search.use import _predict

    predictor = _predict.Predictor.from_study(f"sqlite:///{scored_study / 'optuna-search-demo.db'}")
    fake = Prediction("1", {}, {"severity": "high", "component": "medium", "reproducibility": None}, "raw")
    monkeypatch.setattr(_predict, "evaluate_examples", lambda *a, **kw: [fake])
    (p,) = predictor.predict("Title: The game crashes")
    assert p.labels == {"severity": "high", "component": None, "reproducibility": None}
    assert p.invalid == {"component": "medium", "reproducibility": None} and p.to_record()["invalid"] == p.invalid
    with pytest.raises(Exception, match="is not a row"):
        predictor.predict([None])
