"""The typed trial record: the one writer and reader of trial user attrs."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from optuna_search.core import SplitScores, Status, TrialRecord

FIELDS = ["severity", "component", "reproducibility"]


def _record():
    test = SplitScores(
        accuracy={"severity": 0.6, "component": 0.7, "reproducibility": 0.8},
        n=100,
        parse_failures=2,
        exact_match=0.4,
        ci95={"severity": [0.5, 0.69]},
        per_field={"macro_f1": {"severity": 0.55}},
        invalid_labels={"severity": 1, "component": 0, "reproducibility": 0},
        calibration={"severity": {"log_loss": 0.9, "brier": 0.5, "ece": 0.1}},
    )
    val = SplitScores(accuracy={"severity": 0.5, "component": 0.6, "reproducibility": 0.7}, n=60)
    return TrialRecord(
        point="lora_r=8",
        lora_alpha=32.0,
        test=test,
        validation=val,
        trainable_params=7168,
        train_loss_per_epoch=[1.0, 0.5],
        eval_loss_per_epoch=[1.1, 0.7],
        eval_seconds=4.0,
        eval_examples_per_second=25.0,
        validation_accuracy_curve=[[1, 0.55], [2, 0.6]],
        pruned_at_step=None,
    )


def test_user_attrs_carry_the_documented_names():
    ua = _record().to_user_attrs()
    for key in (
        "severity_accuracy",
        "component_accuracy",
        "reproducibility_accuracy",
        "parse_failures",
        "invalid_labels",
        "lora_alpha",
        "trainable_params",
        "train_loss_per_epoch",
        "eval_loss_per_epoch",
        "eval_seconds",
        "eval_examples_per_second",
        "severity_accuracy_ci95",
        "severity_macro_f1",
        "exact_match_accuracy",
        "eval_examples",
        "severity_log_loss",
        "severity_brier",
        "severity_ece",
        "grid_point",
        "validation_severity_accuracy",
        "validation_overall_accuracy",
        "validation_accuracy_curve",
    ):
        assert key in ua, key
    assert ua["severity_accuracy"] == 0.6 and ua["eval_examples"] == 100 and ua["grid_point"] == "lora_r=8"
    assert "pruned_at_step" not in ua  # what was not recorded is not written


def test_a_record_reads_back_from_a_trial():
    rec = _record()
    trial = create_trial(
        state=TrialState.COMPLETE,
        value=0.7,
        params={"lora_r": 8},
        distributions={"lora_r": CategoricalDistribution([4, 8, 16])},
        user_attrs=rec.to_user_attrs(),
    )
    back = TrialRecord.from_trial(trial, FIELDS)
    assert back.test == rec.test and back.validation == rec.validation
    assert back.overall == rec.test.overall and back.value == 0.7 and back.state == Status.COMPLETE
    assert back.split_overall("validation") == rec.validation.overall
    assert back.objective_value("severity_accuracy", "validation") == 0.5
    assert back.objective_value("eval_seconds_per_example", "test") == 0.04
    assert back.label == "lora_r=8" and back.minutes == 4.0 / 60


def test_studies_written_before_the_record_still_read():
    # A trial as the first version wrote it: no validation, no calibration, no record fields.
    ua = {
        "severity_accuracy": 0.5,
        "component_accuracy": 0.5,
        "reproducibility_accuracy": 0.5,
        "parse_failures": 0,
        "eval_examples": 100,
        "lora_alpha": 16,
        "train_loss_per_epoch": [0.3],
    }
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        create_trial(
            value=0.5, params={"lora_r": 4}, distributions={"lora_r": CategoricalDistribution([4])}, user_attrs=ua
        )
    )
    r = TrialRecord.from_trial(study.trials[0], FIELDS)
    assert r.overall == 0.5 and r.validation is None and r.test.calibration == {} and r.label == "lora_r=4"


def test_a_study_location_travels_as_one_type_and_reads_its_keys():
    """A location crossed 17 signatures as a dict keyed "storage.url": now one type, built
    from (and shown as) the configuration keys it stands for."""
    from optuna_search.core import LOCATION_KEYS, StudyLocation

    loc = StudyLocation.of({"storage.url": "sqlite:///s.db", "train.output_dir": "ckpt"})
    assert loc.storage_url == "sqlite:///s.db" and loc.checkpoints_dir == "ckpt" and loc.study_name is None
    assert loc.keys() == {"storage.url": "sqlite:///s.db", "train.output_dir": "ckpt"}
    assert set(StudyLocation(*"abcde").keys()) == set(LOCATION_KEYS)
    with pytest.raises(ValueError, match="not location keys"):
        StudyLocation.of({"storage.uri": "x"})
