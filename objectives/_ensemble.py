"""Ensembles of trials from their stored predictions: no model is loaded.

- soft voting: per field, the mean of the members' label probabilities, then the most
  probable label (needs label scoring, ``eval.method = "score"``);
- hard voting: per field, the label most members chose; a tie goes to the label with the
  higher mean probability when the members have probabilities, else to the member listed
  first (the best by the study's objective).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from optuna_search.core import UserError
from optuna_search.objectives._metrics import Prediction


@dataclass(frozen=True)
class Member:
    name: str
    trial: int
    predictions: dict[str, Prediction]
    """By example id."""

    @property
    def has_probabilities(self) -> bool:
        return all(p.probs is not None for p in self.predictions.values())


def check_members(members: list[Member], ids: list[str]) -> None:
    """Members must hold predictions for exactly the study's evaluation ids."""
    for m in members:
        missing = [i for i in ids if i not in m.predictions]
        if missing or len(m.predictions) != len(ids):
            raise UserError(
                f"trial {m.trial} ({m.name}) was evaluated on other examples than the study's evaluation ids "
                f"({len(missing)} of {len(ids)} missing); ensembles need the same examples for every member"
            )


def soft_vote(members: list[Member], ids: list[str], fields: list[str]) -> list[Prediction]:
    if not all(m.has_probabilities for m in members):
        raise UserError(
            "soft voting needs label probabilities; members evaluated by `generate` have none "
            '(set eval.method = "score" for a new study)'
        )
    out = []
    for i in ids:
        gold = members[0].predictions[i].gold
        probs = {f: _mean_probs([m.predictions[i].probs[f] for m in members]) for f in fields}  # type: ignore[index]
        predicted: dict[str, str | None] = {f: max(probs[f].items(), key=lambda kv: kv[1])[0] for f in fields}
        out.append(Prediction(i, gold, predicted, "soft vote", probs))
    return out


def hard_vote(members: list[Member], ids: list[str], fields: list[str]) -> list[Prediction]:
    out = []
    for i in ids:
        gold = members[0].predictions[i].gold
        predicted = {f: _majority([m.predictions[i] for m in members], f) for f in fields}
        out.append(Prediction(i, gold, predicted, "hard vote"))
    return out


def _mean_probs(dists: list[dict[str, float]]) -> dict[str, float]:
    labels = sorted({lab for d in dists for lab in d})
    return {lab: sum(d.get(lab, 0.0) for d in dists) / len(dists) for lab in labels}


def _majority(preds: list[Prediction], f: str) -> str | None:
    votes = Counter(p.predicted.get(f) for p in preds if p.predicted.get(f) is not None)
    if not votes:
        return None
    top = max(votes.values())
    tied = [lab for lab, n in votes.items() if n == top]
    if len(tied) > 1 and all(p.probs is not None for p in preds):
        mean = _mean_probs([p.probs[f] for p in preds])  # type: ignore[index]
        return max(tied, key=lambda lab: mean.get(lab or "", 0.0))
    for p in preds:  # members are ordered best first
        if p.predicted.get(f) in tied:
            return p.predicted[f]
    return tied[0]  # pragma: no cover


def correctness(preds: dict[str, Any], ids: list[str], fields: list[str]) -> dict[str, list[bool]]:
    """Per field, and ``overall`` (all fields right), whether each example is right."""
    out = {f: [preds[i].predicted.get(f) == preds[i].gold[f] for i in ids] for f in fields}
    out["overall"] = [all(out[f][k] for f in fields) for k in range(len(ids))]
    return out
