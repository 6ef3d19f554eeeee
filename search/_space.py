"""The search space as Optuna distributions, and the sampler and pruner of a study.

Grids run through :class:`GridPointSampler`, a GridSampler whose point is chosen by the
scheduler (retries first, then grid order, never a point that already finished) and
recorded exactly as GridSampler would (system attrs ``search_space`` and ``grid_id``), so
the study stays an ordinary grid study for every Optuna tool. The other samplers are
Optuna's own, seeded by ``study.seed``.
"""

from __future__ import annotations

import functools
from typing import Any

from optuna_search.core import Config
from optuna_search.core._params import INT_KEYS, to_optuna_value
from optuna_search.storage._internals import (
    grid_points,
    grid_search_space,
    set_trial_system_attr,
)


def grid_space(config: Config) -> dict[str, list[Any]]:
    """The grid with Optuna's scalar values (module lists become 'a,b,c')."""
    return {k: [to_optuna_value(k, v) for v in vals] for k, vals in config.study.grid.items()}


def distributions(config: Config) -> dict[str, Any]:
    """One Optuna distribution per searched hyperparameter."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if config.is_grid:
        return {k: CategoricalDistribution(v) for k, v in grid_space(config).items()}
    out: dict[str, Any] = {}
    for key, spec in config.study.search_space.items():
        if isinstance(spec, list):
            out[key] = CategoricalDistribution([to_optuna_value(key, v) for v in spec])
        elif key in INT_KEYS:
            out[key] = IntDistribution(int(spec["low"]), int(spec["high"]), log=spec.get("log", False), step=int(spec.get("step") or 1))
        else:
            out[key] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=spec.get("log", False), step=spec.get("step"))
    return out


def make_sampler(config: Config):
    import optuna

    s = config.study
    if s.sampler == "grid":
        return grid_point_sampler_class()(grid_space(config), seed=s.seed)
    if s.sampler == "tpe":
        # constant_liar only changes anything while other workers' trials are RUNNING.
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=True, n_startup_trials=s.startup_trials)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup_trials)
    return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(2, s.startup_trials))


def max_validation_points(config: Config) -> int:
    epochs = config.train.epochs
    spec = config.study.grid.get("epochs") if config.is_grid else config.study.search_space.get("epochs")
    if isinstance(spec, list):
        epochs = max(spec)
    elif isinstance(spec, dict):
        epochs = int(spec["high"])
    return epochs * config.train.validations_per_epoch


def make_pruner(config: Config):
    import optuna

    s = config.study
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_steps)
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.pruner_min_resource, reduction_factor=s.pruner_reduction_factor)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=s.pruner_min_resource, max_resource=max(s.pruner_min_resource, max_validation_points(config)),
            reduction_factor=s.pruner_reduction_factor,
        )
    return optuna.pruners.NopPruner()


@functools.cache
def grid_point_sampler_class() -> type:
    """:class:`GridPointSampler`, defined on first use: it subclasses Optuna's
    GridSampler, and Optuna is only imported by the commands that need it."""
    from optuna.samplers import GridSampler

    class GridPointSampler(GridSampler):
        """A GridSampler that creates the trial for the point the scheduler chose:
        ``sampler.ask_point(study, point, distributions)``."""

        def __init__(self, search_space: dict[str, list[Any]], seed: int | None = None) -> None:
            super().__init__(search_space, seed=seed)
            self._claim: dict[str, Any] | None = None
            self._ids = {_point_id(p): i for i, p in enumerate(grid_points(self))}

        def grid_id(self, point: dict[str, Any]) -> int:
            try:
                return self._ids[_point_id(point)]
            except KeyError:
                raise KeyError(f"{point!r} is not a point of the grid {grid_search_space(self)!r}") from None

        def ask_point(self, study, point: dict[str, Any], dists: dict[str, Any]):
            """Create the trial of ``point`` (its params set at once from ``dists``)."""
            self._claim = point
            try:
                return study.ask(dists)
            finally:
                self._claim = None

        def before_trial(self, study, trial) -> None:
            attrs = trial.system_attrs
            if self._claim is None or "grid_id" in attrs or "fixed_params" in attrs:
                # A retry of a stale trial keeps its point (GridSampler returns at once).
                super().before_trial(study, trial)
                return
            set_trial_system_attr(study, trial, "search_space", grid_search_space(self))
            set_trial_system_attr(study, trial, "grid_id", self.grid_id(self._claim))

        def after_trial(self, study, trial, state, values) -> None:
            # GridSampler would call study.stop() after the last point, which only works
            # inside optimize(); the scheduler decides when the grid is done.
            return None

    return GridPointSampler


def __getattr__(name: str) -> Any:
    if name == "GridPointSampler":
        return grid_point_sampler_class()
    raise AttributeError(name)


def _point_id(point: dict[str, Any]) -> tuple:
    return tuple(sorted(point.items()))
