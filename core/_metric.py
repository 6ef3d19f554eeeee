"""The metric table: every score measured per label field on a split's fixed examples, in
one place, as the hyperparameter table holds the hyperparameters. An entry says what the
metric is called per field and over all fields, how it is computed from the labels, how
the fields' values aggregate and how it is shown; the scoring, the trial record (its user
attrs), the baselines, the summary, the notes, the report, the trackers and the schema's
objectives read it. A metric of its own is one entry (and its test).

Accuracy is the first entry and the study's default objective (``overall_accuracy``);
the per-field Wilson interval and the confusion matrix belong to it, outside the table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

INVALID = "<invalid>"
"""What an answer that is no label of its field counts as (never a right answer)."""


def one_answer(field: str, label: str, majority: bool = False) -> str:
    """What a model that gives one answer to every example of a field has shown, in one
    sentence (every report of it says the same): no valid label at all is a model that has
    not learned the answer format, not "0 parse failures"."""
    if label == INVALID:
        return (
            f"{field}: no answer is a valid label (on every example the {field} line is missing or names no label "
            "of the field's set): the model has not learned the answer format; train longer, use a real model, "
            'or score the label sets (eval.method = "score")'
        )
    return (
        f"{field}: every answer is `{label}`{' (the majority label)' if majority else ''}: its {field} accuracy is "
        "that label's share, and it has learned nothing there (macro-F1 shows it)"
    )


def _accuracy(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(gold, predicted)) / len(gold)


def _macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    # Over the real labels only: '<invalid>' is never a right answer.
    return float(f1_score(gold, predicted, labels=list(labels), average="macro", zero_division=0))


def _balanced_accuracy(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    from sklearn.metrics import recall_score

    # The mean recall over the labels that occur in ``gold`` (scikit-learn's definition; a
    # model that answers one label scores 1/labels).
    return float(recall_score(gold, predicted, labels=sorted(set(gold)), average="macro", zero_division=0))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class Metric:
    name: str
    """Per field, ``<field>_<name>`` (``severity_macro_f1``)."""
    overall: str
    """Over all fields (``macro_f1``); a study objective."""
    title: str
    """For people: 'macro-F1'."""
    head: str
    """A table's column head: 'mF1'."""
    compute: Callable[[Sequence[str], Sequence[str], Sequence[str]], float]
    """(gold labels, predicted labels, the field's labels) -> the value; a prediction that is
    no label of its field is ``INVALID``."""
    aggregate: Callable[[Sequence[float]], float] = _mean
    """The fields' values -> the overall value."""
    percent: bool = False
    """Shown as a percentage (else to three decimals)."""
    in_summary: bool = True
    """A column of the run's summary and of the study's note."""

    def in_baseline(self, numbers: Mapping[str, float], field_name: str | None = None) -> float | None:
        """This metric in a baseline's stored numbers (accuracy is stored under the field's
        own name and 'overall'; the others as ``<field>_<name>`` and their overall name)."""
        if self.name == "accuracy":
            return numbers.get(field_name if field_name is not None else "overall")
        return numbers.get(f"{field_name}_{self.name}" if field_name is not None else self.overall)

    def show(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}%" if self.percent else f"{value:.3f}"


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "overall_accuracy", "accuracy", "overall", _accuracy, percent=True),
    Metric("macro_f1", "macro_f1", "macro-F1", "mF1", _macro_f1),
    Metric(
        "balanced_accuracy",
        "balanced_accuracy",
        "balanced accuracy",
        "bAcc",
        _balanced_accuracy,
        percent=True,
        in_summary=False,
    ),
)
BY_METRIC = {m.name: m for m in METRICS}
EXTRA = METRICS[1:]
"""The metrics besides accuracy (the one a split's scores always have)."""
SPLIT_NAMES = ("label_logprob", "exact_match_accuracy", "eval_examples", "examples", "parse_failures", "invalid_labels")
"""What a split's scores also hold, not per field."""


def reserved_field_names(fields: Sequence[str]) -> list[str]:
    """The label fields whose names collide with a name the study stores over all fields
    (``overall``, an aggregate such as ``balanced_accuracy``): each would read back as
    another number."""
    taken = {"overall", *(m.overall for m in METRICS), *SPLIT_NAMES}
    return [f for f in fields if f in taken or any(f"{f}_{m.name}" in taken for m in METRICS)]
