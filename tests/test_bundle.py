"""Bundles of earlier versions (format 1) still import; a hand-edited or padded one is
refused before anything is copied."""

import json

import optuna
import pytest
from legacy_bundle import write_legacy_bundle

from optuna_search.core import UserError
from optuna_search.storage.remote._bundle import StudyLocation, import_bundle
from optuna_search.storage.study._storages import open_storage


@pytest.fixture
def bundle(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    url = f"sqlite:///{work / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.add_trial(
        optuna.trial.create_trial(
            value=1.0, params={"x": 1}, distributions={"x": optuna.distributions.IntDistribution(0, 2)}
        )
    )
    (work / "ckpt" / "s" / "lora_r-4").mkdir(parents=True)
    (work / "ckpt" / "s" / "lora_r-4" / "state.json").write_text("{}")
    out = tmp_path / "bundle"
    write_legacy_bundle(work / "study.db", "s", work / "ckpt", work / "artifacts", out)
    return out, tmp_path


def _target(tmp_path):
    new = tmp_path / "new"
    new.mkdir(exist_ok=True)
    return StudyLocation(f"sqlite:///{new / 'study.db'}", "s", str(new / "ckpt"), str(new / "artifacts")), new


def test_a_clean_bundle_imports(bundle):
    out, tmp_path = bundle
    loc, new = _target(tmp_path)
    import_bundle(out, loc)
    assert (new / "study.db").exists() and (new / "ckpt" / "s" / "lora_r-4" / "state.json").exists()
    assert len(optuna.load_study(study_name="s", storage=loc.storage_url).trials) == 1
    assert not list(out.glob("study.db-*"))  # one self-contained database file


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: {**m, "files": {}}, "files must be an object listing at least study.db"),
        (lambda m: {k: v for k, v in m.items() if k != "study_name"}, "study_name is missing"),
        (lambda m: [m], "must be a JSON object"),
        (lambda m: {**m, "files": {**m["files"], "../evil": {"sha256": "0", "bytes": 1}}}, "points outside the bundle"),
    ],
)
def test_hand_edited_manifests_are_refused_with_what_is_wrong(bundle, edit, needle):
    out, tmp_path = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(edit(manifest)))
    loc, new = _target(tmp_path)
    with pytest.raises(UserError, match=needle):
        import_bundle(out, loc)
    assert not (new / "study.db").exists()


def test_files_the_manifest_does_not_list_are_not_imported_unchecked(bundle):
    out, tmp_path = bundle
    (out / "checkpoints" / "s" / "lora_r-4" / "planted.py").write_text("print('hi')")
    loc, new = _target(tmp_path)
    with pytest.raises(UserError, match="planted.py: not listed in the manifest"):
        import_bundle(out, loc)
    assert not (new / "ckpt").exists()


def test_a_manifest_whose_study_name_was_edited_is_refused(bundle):
    """Seen: an edited study name was imported, and following the error's own suggestion
    (--study-name <edited>) retrained every point as a new study beside the complete one."""
    out, tmp_path = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "study_name": "edited"}))
    loc, new = _target(tmp_path)
    with pytest.raises(UserError, match="its manifest names study 'edited' but its database holds 's'"):
        import_bundle(out, StudyLocation(loc.storage_url, "edited", loc.checkpoints_dir, loc.artifacts_dir))
    assert not (new / "study.db").exists()
