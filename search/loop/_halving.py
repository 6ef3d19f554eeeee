"""Successive halving over checkpoints: which configuration trains next, to which rung,
and which go on (pure functions; the scheduler applies them under the claim lock).

Every configuration of the space (the grid's points, or ``n_trials`` sampled without
repeats) trains to the first rung (a fraction of its training) and pauses at a
checkpoint. When all of them have reached it, the best ceil(n / eta) by the rung's
metric (``study.prune_on`` at that validation point) are promoted, decided once and
stored on the study; the others end PRUNED with their curves. The promoted ones resume
from their checkpoints to the next rung, with the full run's learning-rate schedule and
data order, so a paused-and-resumed configuration trains exactly as an uninterrupted one.
The last rung (1.0) trains to the end and evaluates on the test examples.

With eta = 3 and rungs (1/9, 1/3, 1), 12 configurations with 2 finalists cost about 3.6
full trainings (30% of the grid).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from optuna_search.search.loop._schedule import Action, Done, New, Promote, PruneRest, Status, StudyState, Train, Wait

log = logging.getLogger("optuna_search")


@dataclass(frozen=True)
class Config:
    """One configuration as successive halving sees it."""

    key: str
    state: Status
    """Where it stands, in the study's one vocabulary."""
    reached: int
    """The last rung it reached (-1: none yet)."""
    metrics: dict[int, float]
    """Its metric at each rung it reached (higher is better)."""
    order: int
    """Ties and the population are decided in this order (first trial number / grid order)."""


RUNNABLE = (Status.PENDING, Status.WAITING, Status.PAUSED)


def survivors(n: int, eta: int) -> int:
    return max(1, math.ceil(n / eta))


def next_action(
    configs: list[Config],
    promoted: dict[int, list[str]],
    *,
    n_configs: int,
    n_rungs: int,
    eta: int,
    retry_failed: bool = False,
) -> Action:
    """What to do next. ``promoted[r]``: the keys decided to go on from rung r."""
    population = sorted(configs, key=lambda c: c.order)[:n_configs]
    for r in range(n_rungs):
        if r == 0 and len(population) < n_configs:
            return New(0)
        todo = [c for c in population if c.reached < r and not c.state.finished]
        runnable = [c for c in todo if c.state in RUNNABLE or (retry_failed and c.state == Status.FAILED)]
        if runnable:
            return Train(runnable[0].key, r)
        running = [c.key for c in todo if c.state == Status.RUNNING]
        if running:
            return Wait(tuple(running))
        if r == n_rungs - 1:
            return Done()
        if r not in promoted:
            reached = sorted(
                (c for c in population if c.reached >= r), key=lambda c: (-c.metrics.get(r, -math.inf), c.order)
            )
            return Promote(r, tuple(c.key for c in reached[: survivors(len(population), eta)]))
        left = tuple(c.key for c in population if c.key not in promoted[r] and c.state == Status.PAUSED)
        if left:
            return PruneRest(r, left)
        by_key = {c.key: c for c in population}
        population = [by_key[k] for k in promoted[r] if k in by_key]  # the best first
    return Done()


def tied_at_the_cut(configs: list[Config], rung: int, keep: int) -> list[str]:
    """The configurations whose metric at ``rung`` equals the last promoted one's while
    some of them were left out: a promotion that a tie decided (by order)."""
    reached = sorted(
        (c for c in configs if c.reached >= rung), key=lambda c: (-c.metrics.get(rung, -math.inf), c.order)
    )
    if len(reached) <= keep or keep == 0:
        return []
    cut = reached[keep - 1].metrics.get(rung)
    tied = [c.key for c in reached if c.metrics.get(rung) == cut]
    return tied if any(c.key in tied for c in reached[keep:]) else []


class SuccessiveHalving:
    """The successive-halving schedule (see the module docstring) over a study's points."""

    def __init__(self, n_rungs: int, eta: int, fields: list[str]) -> None:
        self.n_rungs, self.eta, self.fields = n_rungs, eta, fields

    def configs(self, state: StudyState) -> list[Config]:
        out = []
        for i, p in enumerate(state.points):
            reached = self.n_rungs - 1 if p.status == Status.COMPLETE else p.rung(self.fields)
            out.append(
                Config(
                    p.key,
                    p.status,
                    reached,
                    rung_metrics(p.records(self.fields)),
                    i if state.grid else (p.order if p.trials else 10**9 + i),
                )
            )
        return out

    def next(self, state: StudyState, retry_failed: bool) -> Action:
        return next_action(
            self.configs(state),
            state.halving_promoted,
            n_configs=state.n_target,
            n_rungs=self.n_rungs,
            eta=self.eta,
            retry_failed=retry_failed,
        )


def rung_metrics(records) -> dict[int, float]:
    """A configuration's metric at each rung it reached (the intermediate value reported
    at that rung's validation point; the study's prune_on signal)."""
    out: dict[int, float] = {}
    for r in records:
        for rung, value in (r.rung_values or {}).items():
            out[int(rung)] = value
    return out


def cost(n: int, rungs: list[float], eta: int) -> float:
    """Full trainings spent on ``n`` configurations (no failures): each configuration
    pays for the training between the rungs it reaches."""
    total, alive, done = 0.0, n, 0.0
    for r, f in enumerate(rungs):
        total += alive * (f - done)
        done = f
        if r < len(rungs) - 1:
            alive = survivors(alive, eta)
    return total
