"""The study's samplers, subclasses of Optuna's (this module imports optuna: the code
that builds a sampler imports it inside the function, so ``--help`` stays light).

- :class:`GridPointSampler`: a GridSampler whose point is chosen by the scheduler
  (retries first, then grid order, never a point that already finished), recorded
  exactly as GridSampler would (system attrs ``search_space`` and ``grid_id``), so the
  study stays an ordinary grid study for every Optuna tool.
- :class:`NoRepeatSampler`: wraps TPE / random / GP / NSGA-II. Optuna's samplers may
  propose a point again (on purpose: an objective may be noisy, optuna#5440); a trial
  here costs GPU hours and is deterministic given its point, so a proposal that already
  has a trial (finished, running, failed) is asked again, and after a few repeats an
  unseen point is taken at random. The inner sampler is built per trial, seeded by
  ``study.seed + trial number``: a resumed study proposes new points, never replays.
- :class:`QuietBruteForceSampler`: Optuna's BruteForceSampler (every point of a finite
  space once, in random order), minus its ``study.stop()`` at the end, which only works
  inside ``optimize``: the scheduler decides when a study is done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, BruteForceSampler, GridSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from optuna_search.core import point_key
from optuna_search.storage import GRID_ID, GRID_SEARCH_SPACE, grid_points, grid_search_space, set_trial_system_attrs

log = logging.getLogger("optuna_search")
REASKS = 3
"""Proposals asked of the inner sampler before an unseen point is taken at random (a
model-based sampler that proposes a point again tends to propose it once more)."""


class GridPointSampler(GridSampler):
    """A GridSampler whose trials are created for the point the scheduler chose: the
    ledger asks while ``sampler.claiming(point)`` is open."""

    def __init__(self, search_space: dict[str, list[Any]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self._claim: dict[str, Any] | None = None
        self._ids = {_point_id(p): i for i, p in enumerate(grid_points(self))}

    def grid_id(self, point: dict[str, Any]) -> int:
        try:
            return self._ids[_point_id(point)]
        except KeyError:
            raise KeyError(f"{point!r} is not a point of the grid {grid_search_space(self)!r}") from None

    def point_of(self, trial: FrozenTrial) -> dict[str, Any] | None:
        """The point of a trial created for this grid by a process that died before its
        params were set (None for a trial of another grid)."""
        attrs = trial.system_attrs
        if GRID_ID in attrs and attrs.get(GRID_SEARCH_SPACE) == grid_search_space(self):
            return grid_points(self)[attrs[GRID_ID]]
        return None

    @contextlib.contextmanager
    def claiming(self, point: dict[str, Any]) -> Iterator[None]:
        """While open, the trial the study asks for is created for ``point`` (storage's
        ``PointSampler``: the ledger asks)."""
        self._claim = point
        try:
            yield
        finally:
            self._claim = None

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        attrs = trial.system_attrs
        if self._claim is None or GRID_ID in attrs or "fixed_params" in attrs:
            # A retry of a stale trial keeps its point (GridSampler returns at once).
            super().before_trial(study, trial)
            return
        set_trial_system_attrs(
            study, trial, {GRID_SEARCH_SPACE: grid_search_space(self), GRID_ID: self.grid_id(self._claim)}
        )

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        # GridSampler would call study.stop() after the last point, which only works
        # inside optimize(); the scheduler decides when the grid is done.
        return None


class NoRepeatSampler(BaseSampler):
    """Proposes only points that have no trial yet (see the module docstring)."""

    def __init__(
        self,
        make_inner: Callable[[int], BaseSampler],
        space: dict[str, BaseDistribution],
        seed: int,
        points: list[dict[str, Any]] | None,
    ) -> None:
        self._make_inner = make_inner
        self._space = space
        self._seed = seed
        self._points = points
        """Every point of a finite space (None: continuous or too large to list)."""
        self._inner: dict[int, BaseSampler] = {}

    def inner(self, number: int) -> BaseSampler:
        if number not in self._inner:
            self._inner = {number: self._make_inner(self._seed + number)}  # one trial at a time per process
        return self._inner[number]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        inner = self.inner(trial.number)
        taken = {
            point_key({k: t.params[k] for k in search_space})
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and set(t.params) >= set(search_space)
        }
        for _ in range(REASKS):
            proposal = self._propose(inner, study, trial)
            if point_key(proposal) not in taken:
                return proposal
        unseen = self._unseen(taken, trial.number)
        if unseen is None:
            # Every point has a trial: the scheduler only asks when one is left, so this
            # is a race with another process; the duplicate is harmless (it resumes).
            return proposal
        log.info(
            "the %s sampler kept proposing points that already have a trial; trial %d takes an unseen point at random",
            type(inner).__name__.removesuffix("Sampler"),
            trial.number,
        )
        return unseen

    def _propose(self, inner: BaseSampler, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        relative_space = inner.infer_relative_search_space(study, trial)
        proposal = dict(inner.sample_relative(study, trial, relative_space)) if relative_space else {}
        for name, dist in self._space.items():
            if name not in proposal:
                proposal[name] = inner.sample_independent(study, trial, name, dist)
        return proposal

    def _unseen(self, taken: set[str], number: int) -> dict[str, Any] | None:
        rng = random.Random(self._seed * 1_000_003 + number)
        if self._points is not None:
            left = [p for p in self._points if point_key(p) not in taken]
            return rng.choice(left) if left else None
        for _ in range(1000):  # a continuous space: a fresh random point is unseen
            point = {name: _random_value(dist, rng) for name, dist in self._space.items()}
            if point_key(point) not in taken:
                return point
        return None

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner(trial.number).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.inner(trial.number).after_trial(study, trial, state, values)
        self._inner.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._inner.clear()


class QuietBruteForceSampler(BruteForceSampler):
    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None  # BruteForceSampler calls study.stop() when done; the scheduler decides


def _random_value(dist: BaseDistribution, rng: random.Random) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, IntDistribution):
        return rng.randrange(dist.low, dist.high + 1, dist.step)
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def _point_id(point: dict[str, Any]) -> tuple:
    return tuple(sorted(point.items()))
