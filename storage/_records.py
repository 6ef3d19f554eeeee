"""The one writer of what optuna-search stores on trials and studies: a trial's
:class:`TrialRecord` as its user attrs, a study's :class:`StudyMeta` as its user attrs
(``tests/test_layers.py`` checks that no other code sets a user attr)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optuna_search.core import StudyMeta, TrialRecord
from optuna_search.storage._internals import set_trial_user_attr

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, Trial


def write_record(study: "optuna.Study", trial: "Trial | FrozenTrial", record: TrialRecord) -> None:
    """Write a (partial) record's user attrs on a trial (finished ones included)."""
    for key, value in record.to_user_attrs().items():
        set_trial_user_attr(study, trial, key, value)


def write_meta(study: "optuna.Study", meta: StudyMeta) -> None:
    """Write the fields of a (partial) study record as the study's user attrs."""
    for key, value in meta.to_user_attrs().items():
        study.set_user_attr(key, value)


def read_meta(study: "optuna.Study") -> StudyMeta:
    return StudyMeta.from_user_attrs(study.user_attrs)
