"""The results table and the study note: baselines sit beside the trials on both splits."""

import pytest

from optuna_search.core import Config, Status, TrialRecord
from optuna_search.core._record import SplitScores
from optuna_search.dashboards._notes import study_note
from optuna_search.dashboards._summary import SummaryPoint, SummaryRow, best_row, render_summary, summary_rows

FIELDS = ["severity", "component", "reproducibility"]
TEST = {"majority": {"severity": 0.5, "component": 0.4, "reproducibility": 0.6, "overall": 0.5}}
VALIDATION = {"majority": {"severity": 0.6, "component": 0.5, "reproducibility": 0.7, "overall": 0.6}}
ROW = SummaryRow(
    "lora_r=4",
    Status.COMPLETE,
    1,
    trial=0,
    lora_alpha=16.0,
    accuracy={"severity": 0.7, "component": 0.6, "reproducibility": 0.8},
    overall=0.7,
    validation=0.65,
    value=0.7,
)


def test_baseline_rows_show_their_validation_accuracy_in_the_val_column():
    table = render_summary([ROW], FIELDS, TEST, validation_baselines=VALIDATION)
    _heads, _, trial, baseline = table.splitlines()
    cells = baseline.split()
    assert cells[:2] == ["baseline:", "majority"]
    # severity, component, reproducibility, overall on test, macro-F1, then val
    assert cells[3:7] == ["50.0%", "40.0%", "60.0%", "50.0%"] and cells[8] == "60.0%"
    assert "65.0%" in trial.split()


def test_baseline_rows_without_stored_validation_baselines_say_so():
    baseline = render_summary([ROW], FIELDS, TEST).splitlines()[-1].split()
    assert baseline[8] == "-"  # never a made-up number


def test_study_note_puts_validation_baselines_beside_test():
    note = study_note(Config(), [ROW], TEST, 100, 3, validation_baselines=VALIDATION)
    assert "| baseline: majority | 50.0% | 40.0% | 60.0% | 50.0% | - | 60.0% |" in note


def test_a_point_proposed_again_shows_its_original_result_and_can_be_the_best():
    """A sampler re-proposing a point gets a duplicate trial without scores of its own
    (duplicate_of): the row and the best must come from the original trial. (Seen on
    a TPE study of the demo: the row showed the empty duplicate and the summary named a
    39% trial best while Optuna's best was 74%.)"""

    def scored(number, acc):
        return TrialRecord(
            number=number,
            state=Status.COMPLETE,
            test=SplitScores(dict.fromkeys(FIELDS, acc), 100),
            validation=SplitScores(dict.fromkeys(FIELDS, acc), 100),
        )

    good = SummaryPoint(
        "lr=0.002,r=32",
        Status.COMPLETE,
        [
            scored(9, 0.74),
            TrialRecord(number=10, state=Status.COMPLETE, duplicate_of=9),
            TrialRecord(number=11, state=Status.COMPLETE, duplicate_of=9),
        ],
    )
    poor = SummaryPoint("lr=0.01,r=32", Status.COMPLETE, [scored(2, 0.39)])
    rows = summary_rows([good, poor], FIELDS, "validation")
    assert rows[0].trial == 9 and rows[0].overall == pytest.approx(0.74) and rows[0].attempts == 1
    assert best_row(rows, "overall_accuracy", "validation", FIELDS).point == "lr=0.002,r=32"
    assert "complete (proposed again 2x)" in render_summary(rows, FIELDS, None, grid=False)


def _scored(number, test, validation):
    return TrialRecord(
        number=number,
        state=Status.COMPLETE,
        test=SplitScores(dict.fromkeys(FIELDS, test), 100),
        validation=SplitScores(dict.fromkeys(FIELDS, validation), 100),
    )


def test_ties_on_validation_are_never_broken_by_test():
    """With the objective on validation, two trials tied there (and on every tie-breaker
    measured on validation) go to the earlier one, never to the one with the better test
    score. (Seen: the summary named trial 1 best while Optuna's best_trial was 0.)"""
    rows = summary_rows(
        [
            SummaryPoint("a", Status.COMPLETE, [_scored(0, 0.60, 0.70)]),
            SummaryPoint("b", Status.COMPLETE, [_scored(1, 0.90, 0.70)]),
        ],
        FIELDS,
        "validation",
    )
    assert best_row(rows, "overall_accuracy", "validation", FIELDS).trial == 0


def test_a_majority_label_model_is_flagged():
    confusion = {"labels": ["a", "b", "<invalid>"], "matrix": [[5, 0, 0], [3, 0, 0]]}
    test = SplitScores(
        dict.fromkeys(FIELDS, 0.6),
        8,
        confusion={"component": confusion},
        per_field={"macro_f1": dict.fromkeys(FIELDS, 0.3)},
    )
    (row,) = summary_rows(
        [SummaryPoint("r", Status.COMPLETE, [TrialRecord(number=0, state=Status.COMPLETE, test=test)])], FIELDS
    )
    assert row.single_label == {"component": "a"} and row.overall_of("macro_f1") == pytest.approx(0.3)


def test_status_counts_the_trials_segments_not_their_pauses():
    """Seen: a paused successive-halving configuration counted from its start until now
    (0.45 h, then 0.49 h a minute later, for a minute of training)."""
    import datetime as dt

    from optuna_search.dashboards import StatusInput, status_report

    now = 2_000_000_000.0
    hour_ago = dt.datetime.fromtimestamp(now - 3600)
    paused = TrialRecord(number=0, state=Status.PAUSED, seconds_spent=60.0, datetime_start=hour_ago)
    running = TrialRecord(
        number=1, state=Status.RUNNING, seconds_spent=30.0, resumed_at=now - 10, datetime_start=hour_ago
    )
    done = TrialRecord(
        number=2,
        state=Status.COMPLETE,
        seconds_spent=120.0,
        datetime_start=hour_ago,
        datetime_complete=dt.datetime.fromtimestamp(now),
    )
    points = [
        SummaryPoint("a", Status.PAUSED, [paused]),
        SummaryPoint("b", Status.RUNNING, [running]),
        SummaryPoint("c", Status.COMPLETE, [done]),
    ]
    report = status_report(points, StatusInput(3, True, fields=FIELDS, finished=1), now=now)
    assert report.hours_spent * 3600 == pytest.approx(60 + 30 + 10 + 120)
    assert report.eta_hours * 3600 == pytest.approx(2 * 120)  # two left, at the completed trial's time


def test_a_model_that_answers_no_valid_label_is_said_so_not_zero_parse_failures():
    """Seen on a user's data: "every answer is '<invalid>'" beside "0 parse failures" (the
    answers parsed, into labels outside the field's set). The trial's note says that no
    answer is a valid label and counts them."""
    from optuna_search.dashboards import trial_note

    confusion = {"labels": ["a", "b", "<invalid>"], "matrix": [[0, 0, 5], [0, 0, 3]]}
    test = SplitScores(dict.fromkeys(FIELDS, 0.0), 8, confusion={"severity": confusion}, invalid_labels={"severity": 8})
    note = trial_note(TrialRecord(number=0, state=Status.COMPLETE, test=test), Config(), FIELDS)
    assert "severity: no answer is a valid label" in note and "not learned the answer format" in note
    assert "parse failures: 0 of 8 examples; answers naming no label of their field's set: 8." in note
