"""The search space as Optuna distributions, its size, and the sampler and pruner of a
study (built from the hyperparameter table, ``core._params``).

Grids run through ``GridPointSampler`` (the scheduler chooses the point). The other
samplers are Optuna's own, seeded by ``study.seed`` and the trial number, behind
``NoRepeatSampler``: on a finite space no trial is spent on a point that already has a
trial; ``brute_force`` is Optuna's BruteForceSampler, which never repeats by design.
The samplers' classes are in ``_samplers`` (they subclass Optuna's, so that module
imports optuna; it is imported here only inside the functions that build one).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from optuna_search.core import BY_NAME, Config, UserError, to_optuna_value

if TYPE_CHECKING:
    import optuna

# A finite space larger than this is sampled like an infinite one (no enumeration).
ENUMERABLE = 100_000


def grid_space(config: Config) -> dict[str, list[Any]]:
    """The grid with Optuna's scalar values (module lists become 'a,b,c')."""
    return {k: [to_optuna_value(k, v) for v in vals] for k, vals in config.study.grid.items()}


def distributions(config: Config) -> dict[str, optuna.distributions.BaseDistribution]:
    """One Optuna distribution per searched hyperparameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if config.is_grid:
        return {k: CategoricalDistribution(v) for k, v in grid_space(config).items()}
    out: dict[str, Any] = {}
    for key, spec in config.study.search_space.items():
        if isinstance(spec, list):
            out[key] = CategoricalDistribution([to_optuna_value(key, v) for v in spec])
        elif BY_NAME[key].type is int:
            out[key] = IntDistribution(
                int(spec["low"]), int(spec["high"]), log=spec.get("log", False), step=int(spec.get("step") or 1)
            )
        else:
            out[key] = FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=spec.get("log", False), step=spec.get("step")
            )
    return out


def fitted_distributions(config: Config, trials: list[Any], where: str = "", shown_url: str = "") -> dict[str, Any]:
    """The distributions new trials of an existing study are created with.

    Optuna fixes a parameter's distribution with the study's first trial: a categorical
    parameter's values cannot change (``CategoricalDistribution does not support dynamic
    value space``). A grid or a space that keeps to the stored values (a shrunk grid) runs
    with the stored distribution; one that adds values, or changes a parameter's kind, is
    refused here, with the way to run it, before anything is written to the study."""
    from optuna.distributions import CategoricalDistribution, check_distribution_compatibility

    wanted = distributions(config)
    stored: dict[str, Any] = {}
    for t in trials:
        for key, dist in t.distributions.items():
            stored.setdefault(key, dist)
    out, problems = dict(wanted), []
    for key, dist in wanted.items():
        old = stored.get(key)
        if old is None:
            continue
        if isinstance(old, CategoricalDistribution) and isinstance(dist, CategoricalDistribution):
            added = [v for v in dist.choices if v not in old.choices]
            if not added:
                out[key] = old  # a subset of the stored values: the stored distribution holds it
                continue
            problems.append(f"{key} adds {added} to the values {list(old.choices)} its trials were created with")
            continue
        try:
            check_distribution_compatibility(old, dist)
        except ValueError:
            problems.append(f"{key} is {_kind(dist)} here, {_kind(old)} in its trials")
    if problems:
        raise UserError(
            f"{where or 'the study'} cannot take this search space: Optuna fixes a parameter's values with the study's "
            f"first trial ({'; '.join(problems)}). Run it as a new study that starts from this one's trials: "
            f"--study-name NEW --warm-start-from '{shown_url}#{config.study.name}' (or keep the "
            "original values; a grid may shrink)"
        )
    return out


def _kind(dist: Any) -> str:
    name = type(dist).__name__.replace("Distribution", "").lower()
    return f"{name} {list(dist.choices)}" if hasattr(dist, "choices") else f"{name} [{dist.low}, {dist.high}]"


def _choices(spec: Any, key: str) -> list[Any] | None:
    """Every value of one dimension of the search space, or None when it is continuous."""
    if isinstance(spec, list):
        return [to_optuna_value(key, v) for v in spec]
    step = spec.get("step")
    if BY_NAME[key].type is int:
        step = int(step or 1)
        if spec.get("log"):
            return list(range(int(spec["low"]), int(spec["high"]) + 1))
        return list(range(int(spec["low"]), int(spec["high"]) + 1, step))
    if step is None:
        return None
    n = math.floor((spec["high"] - spec["low"]) / step + 1e-9) + 1
    return [round(spec["low"] + i * step, 12) for i in range(n)]


def space_size(config: Config) -> int | None:
    """Points in the search space (the grid's, or a finite sampler space's); None when a
    dimension is continuous."""
    if config.is_grid:
        return len(config.grid_points())
    size = 1
    for key, spec in config.study.search_space.items():
        values = _choices(spec, key)
        if values is None:
            return None
        size *= len(values)
    return size


def enumerate_space(config: Config) -> list[dict[str, Any]] | None:
    """Every point of a finite sampler space (Optuna's values), or None when it is
    continuous or too large to list."""
    size = space_size(config)
    if size is None or size > ENUMERABLE:
        return None
    keys = list(config.study.search_space)
    dims = [_choices(config.study.search_space[k], k) for k in keys]
    return [dict(zip(keys, values)) for values in itertools.product(*dims)]  # type: ignore[arg-type]


def n_target(config: Config) -> int:
    """Finished trials (grid points, sampled configurations) that complete the study:
    the grid's size, or n_trials clipped to the size of a finite space."""
    if config.is_grid:
        return len(config.grid_points())
    size = space_size(config)
    return config.study.n_trials if size is None else min(config.study.n_trials, size)


def make_sampler(config: Config) -> optuna.samplers.BaseSampler:
    from optuna_search.search.setup._samplers import GridPointSampler, NoRepeatSampler, QuietBruteForceSampler

    s = config.study
    if s.sampler == "grid":
        return GridPointSampler(grid_space(config), seed=s.seed)
    if s.sampler == "brute_force":
        return QuietBruteForceSampler(seed=s.seed)
    return NoRepeatSampler(
        lambda seed: _inner_sampler(config, seed), distributions(config), s.seed, enumerate_space(config)
    )


def _inner_sampler(config: Config, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    s = config.study
    if s.sampler == "tpe":
        # constant_liar only changes anything while other workers' trials are RUNNING.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True, n_startup_trials=s.startup_trials
        )
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.startup_trials)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, s.startup_trials))


def max_validation_points(config: Config) -> int:
    epochs = config.train.epochs
    spec = config.study.grid.get("epochs") if config.is_grid else config.study.search_space.get("epochs")
    if isinstance(spec, list):
        epochs = max(spec)
    elif isinstance(spec, dict):
        epochs = int(spec["high"])
    return epochs * config.train.validations_per_epoch + (len(config.study.rungs) if config.halving else 0)


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    import optuna

    s = config.study
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_steps
        )
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=s.pruner_min_resource, reduction_factor=s.pruner_reduction_factor
        )
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=s.pruner_min_resource,
            max_resource=max(s.pruner_min_resource, max_validation_points(config)),
            reduction_factor=s.pruner_reduction_factor,
        )
    return optuna.pruners.NopPruner()
