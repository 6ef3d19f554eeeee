"""A study's :class:`StudyMeta` as its user attrs, read and written (a trial's record is
written by the ledger, ``storage._ledger``; ``tests/test_layers.py`` checks that no other
code sets a user attr)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optuna_search.core import StudyMeta

if TYPE_CHECKING:
    import optuna


def write_meta(study: optuna.Study, meta: StudyMeta) -> None:
    """Write the fields of a (partial) study record as the study's user attrs."""
    for key, value in meta.to_user_attrs().items():
        study.set_user_attr(key, value)


def read_meta(study: optuna.Study) -> StudyMeta:
    return StudyMeta.from_user_attrs(study.user_attrs)
