"""One definition of the best trial (core/_best.py): the run summary, `status`, the
report's recommendation, `predict --trial best` / `export-model` and the Python API name
the same trial on a study with ties, where Optuna's own best_trial (ties to the earlier
trial) would name another."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from optuna_search.core import SplitScores, Status, StudyMeta, TrialRecord, best_record
from optuna_search.search.front._config import load_config

FIELDS = ["severity", "component", "reproducibility"]


def _record(number, severity, other, *, val=None, gap=0.1, speed=10.0):
    acc = {"severity": severity, "component": other, "reproducibility": other}
    return TrialRecord(
        number=number,
        state=Status.COMPLETE,
        test=SplitScores(acc, 100),
        validation=SplitScores(val or acc, 100),
        train_loss_per_epoch=[1.0],
        eval_loss_per_epoch=[1.0 + gap],
        eval_examples_per_second=speed,
    )


def test_the_rule_criterion_by_criterion():
    # objective tie -> the first field (severity) on the objective's split
    a, b = _record(0, 0.60, 0.75), _record(1, 0.75, 0.675)  # both 0.70 overall
    assert best_record([a, b], "overall_accuracy", "test", FIELDS).number == 1
    # ...then the smaller train/eval gap, then speed, then the earlier trial
    c, d = _record(0, 0.7, 0.7, gap=0.5), _record(1, 0.7, 0.7, gap=0.1)
    assert best_record([c, d], "overall_accuracy", "test", FIELDS).number == 1
    e, f = _record(0, 0.7, 0.7, speed=5), _record(1, 0.7, 0.7, speed=9)
    assert best_record([e, f], "overall_accuracy", "test", FIELDS).number == 1
    assert best_record([_record(0, 0.7, 0.7), _record(1, 0.7, 0.7)], "overall_accuracy", "test", FIELDS).number == 0
    # On validation, test scores never break a tie.
    g = _record(0, 0.9, 0.9, val=dict.fromkeys(FIELDS, 0.7))
    h = _record(1, 0.5, 0.5, val=dict.fromkeys(FIELDS, 0.7))
    assert best_record([g, h], "overall_accuracy", "validation", FIELDS).number == 0
    # A cost objective is minimised.
    fast, slow = _record(0, 0.7, 0.7, speed=20), _record(1, 0.7, 0.7, speed=5)
    assert best_record([fast, slow], "eval_seconds_per_example", "test", FIELDS).number == 0


@pytest.fixture
def tied_study(tmp_path):
    """A finished three-point study whose trials 0 and 1 tie on the objective (overall test
    accuracy 70%); trial 1 is better on severity."""
    url = f"sqlite:///{tmp_path / 'optuna-search-demo.db'}"
    config = load_config(preset="demo", sets=[f'storage.url="{url}"'])
    from optuna_search.storage.study._records import write_meta
    from optuna_search.storage.study._storages import open_storage

    study = optuna.create_study(study_name="demo", storage=open_storage(url), direction="maximize")
    write_meta(
        study,
        StudyMeta(
            config=config.to_dict(),
            eval_subset=[],
            validation_subset=[],
            labels={f: ["a"] for f in FIELDS},
            baselines={"majority": {**dict.fromkeys(FIELDS, 0.3), "overall": 0.3}},
        ),
    )
    dist = {"lora_r": CategoricalDistribution([4, 8, 16])}
    for _n, (r, rec) in enumerate(
        [(4, _record(0, 0.60, 0.75)), (8, _record(1, 0.75, 0.675)), (16, _record(2, 0.6, 0.6))]
    ):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=rec.test.overall,
                params={"lora_r": r},
                distributions=dist,
                user_attrs={**rec.to_user_attrs(), "grid_point": f"lora_r={r}"},
            )
        )
    assert study.best_trial.number == 0  # Optuna's rule: the earlier of the tied trials
    return study, config, tmp_path


def test_summary_status_report_predict_export_and_api_agree_on_a_tie(tied_study):
    import optuna_search
    from optuna_search.dashboards._report import collect_report
    from optuna_search.search.front._status import status
    from optuna_search.search.front._summary import summarize
    from optuna_search.search.loop._scheduler import study_state
    from optuna_search.search.use._predict import chosen_trial

    study, config, _work = tied_study
    state = study_state(study, config)
    summary = summarize(study, config, state, ran=0, budget_reached=False).text
    assert "best: lora_r=8 (trial 1)" in summary
    assert "best so far: lora_r=8 (trial 1)" in status(study, config)[0]
    assert collect_report(study, config, None).best.trial == 1
    assert chosen_trial(study, config, "best").number == 1  # predict --trial best, export-model
    handle = optuna_search.open_study(config.storage.url)
    assert handle.best.number == 1
