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

Adaptive promotion (``study.promote = "adaptive"``, :class:`Adaptive`) does not trust
the rung's order blindly: it promotes in steps and judges each step by what the
configurations that went on did at the next rung. The first step promotes the best
ceil(n / eta) and the one the rung ranked last (a probe of the order). When they have
reached the next rung the study compares the two rungs' orders (Spearman's rho) and each
configuration against the best there (a one-sided paired t-test on the fixed validation
examples), and decides:

- **misleading** (the probe ends best; or, the probe shown worse, rho < 0): the rest go
  on (to the end, with two rungs), the rung's last first;
- **none** (the probe is not shown worse than the best): the rest go on, in the rung's
  order;
- **weak** (0 <= rho < strong_rho): the next ceil(n / eta) by the rung go on, judged again;
- **strong**: cut, when the last of those promoted on merit ended worse than the best
  (its order held to the margin); else the next ceil(n / eta) go on, judged again.

Each step is stored on the study with its evidence (``Promote.evidence``), logged, and
shown in the report; a rung whose promotions are still open is in ``StudyState.halving_open``.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from optuna_search.objectives import paired_worse
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
    examples: dict[int, list[float]] = field(default_factory=dict)
    """Its metric per validation example at each rung reached (the paired evidence)."""


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
    adaptive: Adaptive | None = None,
    open_rungs: frozenset[int] = frozenset(),
) -> Action:
    """What to do next. ``promoted[r]``: the keys that go on from rung r; final unless r
    is in ``open_rungs`` and the promotion is ``adaptive``."""
    population = sorted(configs, key=lambda c: c.order)[:n_configs]
    for r in range(n_rungs):
        if r == 0 and len(population) < n_configs:
            return New(0)
        todo = [c for c in population if c.reached < r and not c.state.finished]
        if (step := _train_or_wait(todo, r, retry_failed)) is not None:
            return step
        if r == n_rungs - 1:
            return Done()
        ranked = sorted(
            (c for c in population if c.reached >= r), key=lambda c: (-c.metrics.get(r, -math.inf), c.order)
        )
        if r not in promoted:
            if adaptive is not None:
                return adaptive.first_step(ranked, r, eta)
            return Promote(r, tuple(c.key for c in ranked[: survivors(len(population), eta)]))
        if adaptive is not None and r in open_rungs:
            by_key = {c.key: c for c in population}
            went = [by_key[k] for k in promoted[r] if k in by_key]
            ahead = [c for c in went if c.reached < r + 1 and not c.state.finished]
            return _train_or_wait(ahead, r + 1, retry_failed) or adaptive.next_step(ranked, promoted[r], r, eta)
        left = tuple(c.key for c in population if c.key not in promoted[r] and c.state == Status.PAUSED)
        if left:
            return PruneRest(r, left)
        by_key = {c.key: c for c in population}
        population = [by_key[k] for k in promoted[r] if k in by_key]  # the best first
    return Done()


def _train_or_wait(todo: list[Config], rung: int, retry_failed: bool) -> Action | None:
    """Train the first of ``todo`` that can run to ``rung``; wait when the rest run elsewhere."""
    runnable = [c for c in todo if c.state in RUNNABLE or (retry_failed and c.state == Status.FAILED)]
    if runnable:
        return Train(runnable[0].key, rung)
    running = [c.key for c in todo if c.state == Status.RUNNING]
    return Wait(tuple(running)) if running else None


@dataclass(frozen=True)
class Adaptive:
    """Adaptive promotion (module docstring): promote in steps of ceil(n / eta) and judge
    each step by the next rung."""

    alpha: float = 0.1
    """A configuration is worse than the best at the next rung when a one-sided paired
    t-test on the validation examples says so at this level (else: not worse)."""
    strong_rho: float = 0.5
    """Spearman's rho between the two rungs from which the rung's order counts as strong."""
    probe: bool = True
    """Promote the rung's last one with the first step, to test the order."""
    cut_alpha: float | None = 0.05
    """A cut leaves out only those the rung itself shows worse than the last promoted on
    merit (one-sided paired t-test at this level); the others go on too. None: all of them."""

    def first_step(self, ranked: list[Config], rung: int, eta: int) -> Promote:
        k = survivors(len(ranked), eta)
        keys = [c.key for c in ranked[:k]]
        probe = ranked[-1] if self.probe and len(ranked) > k + 1 else None
        if probe is not None:
            keys.append(probe.key)
        return Promote(
            rung,
            tuple(keys),
            final=len(keys) == len(ranked),
            evidence={
                "decision": "first step",
                "promoted": keys,
                "probe": probe.key if probe is not None else None,
            },
        )

    def _not_shown_worse(
        self, ranked: list[Config], promoted: list[str], rest: list[Config], rung: int
    ) -> list[Config]:
        """At a cut, those left that the rung's examples do not show worse than the last
        one promoted on merit (none with ``cut_alpha`` None or without per-example scores)."""
        merit = _merit(ranked, set(promoted))
        edge = merit[-1].examples.get(rung) if merit else None
        if self.cut_alpha is None or not edge:
            return []
        return [
            c
            for c in rest
            if (mine := c.examples.get(rung)) and len(mine) == len(edge) and paired_worse(edge, mine) >= self.cut_alpha
        ]

    def next_step(self, ranked: list[Config], promoted: list[str], rung: int, eta: int) -> Promote:
        """Judge the promotions so far at the next rung; promote more or stop (final)."""
        went = set(promoted)
        rest = [c for c in ranked if c.key not in went]
        measured = [c for c in ranked if c.key in went and rung + 1 in c.metrics]
        e = judge(ranked, measured, rung, self.alpha, self.strong_rho)
        if not rest:
            decision, more = "all went on", []
        elif e["signal"] == "misleading":
            decision, more = "the rest go on", rest[::-1]
        elif e["signal"] == "none":
            decision, more = "the rest go on", rest
        elif e["signal"] == "strong" and not e["frontier_competitive"]:
            decision, more = "cut", self._not_shown_worse(ranked, promoted, rest, rung)
        else:
            decision, more = "promote more", rest[: survivors(len(ranked), eta)]
        final = decision != "promote more" or len(more) == len(rest)
        evidence = {**e, "decision": decision, "promoted": [c.key for c in more]}
        return Promote(rung, tuple(promoted) + tuple(c.key for c in more), final=final, evidence=evidence)


def _merit(ranked: list[Config], went: set[str]) -> list[Config]:
    """The rung's best that went on without a gap (promoted on merit, not as a probe)."""
    return list(itertools.takewhile(lambda c: c.key in went, ranked))


def judge(ranked: list[Config], measured: list[Config], rung: int, alpha: float, strong_rho: float) -> dict[str, Any]:
    """What the configurations that went on from ``rung`` say of its order at the next
    rung: Spearman's rho between the rungs, the best at the next rung, who is not worse
    than it (paired test), the probe (the promoted one the rung ranked lowest, beyond
    the ones it promoted on merit) and the signal (strong, weak, none, misleading)."""
    if not measured:
        return {"n": 0, "rho": None, "signal": "weak", "frontier_competitive": True, "best": None}
    nxt = rung + 1
    rank = {c.key: i for i, c in enumerate(ranked)}
    best = max(measured, key=lambda c: (c.metrics[nxt], -rank[c.key]))

    def competitive(c: Config) -> bool:
        if c is best:
            return True
        mine, theirs = c.examples.get(nxt), best.examples.get(nxt)
        if mine and theirs and len(mine) == len(theirs):
            return paired_worse(theirs, mine) >= alpha
        return c.metrics[nxt] >= best.metrics[nxt] - 0.01

    merit = _merit(ranked, {c.key for c in measured})
    beyond = [c for c in measured if rank[c.key] >= len(merit)]
    probe = max(beyond, key=lambda c: rank[c.key]) if beyond else None
    rho = _spearman([c.metrics[rung] for c in measured], [c.metrics[nxt] for c in measured])
    if probe is not None and probe is best:
        signal = "misleading"
    elif probe is not None and competitive(probe):
        signal = "none"
    elif rho is not None and rho < 0:
        signal = "misleading"
    elif rho is not None and rho < strong_rho:
        signal = "weak"
    else:
        signal = "strong"
    edge = merit[-1] if merit else None  # the last promoted on merit: did the order hold there?
    return {
        "n": len(measured),
        "rho": rho,
        "best": best.key,
        "competitive": [c.key for c in measured if competitive(c)],
        "probe": probe.key if probe is not None else None,
        "signal": signal,
        "frontier_competitive": edge is None or competitive(edge),
    }


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho (scipy); None for fewer than 3 pairs or no spread."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    return round(float(spearmanr(xs, ys).statistic), 3)


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

    def __init__(self, n_rungs: int, eta: int, fields: list[str], adaptive: Adaptive | None = None) -> None:
        self.n_rungs, self.eta, self.fields, self.adaptive = n_rungs, eta, fields, adaptive

    def configs(self, state: StudyState) -> list[Config]:
        out = []
        for i, p in enumerate(state.points):
            reached = self.n_rungs - 1 if p.status == Status.COMPLETE else p.rung(self.fields)
            records = p.records(self.fields)
            out.append(
                Config(
                    p.key,
                    p.status,
                    reached,
                    rung_metrics(records),
                    i if state.grid else (p.order if p.trials else 10**9 + i),
                    rung_examples(records),
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
            adaptive=self.adaptive,
            open_rungs=state.halving_open,
        )


def rung_metrics(records) -> dict[int, float]:
    """A configuration's metric at each rung it reached (the intermediate value reported
    at that rung's validation point; the study's prune_on signal)."""
    out: dict[int, float] = {}
    for r in records:
        for rung, value in (r.rung_values or {}).items():
            out[int(rung)] = value
    return out


def rung_examples(records) -> dict[int, list[float]]:
    """A configuration's metric per validation example at each rung it reached."""
    out: dict[int, list[float]] = {}
    for r in records:
        for rung, values in (r.rung_examples or {}).items():
            out[int(rung)] = list(values)
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
