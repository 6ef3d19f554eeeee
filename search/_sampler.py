"""A GridSampler that runs the grid point the scheduler chose.

Optuna's GridSampler picks a random unvisited point for each new trial. The scheduler in
``_study`` decides itself which point runs next (retries first, then grid order, never a
point that already has a COMPLETE trial), so this sampler takes that choice and records
it exactly as GridSampler would (system attrs ``search_space`` and ``grid_id``): the
study stays an ordinary grid study for every Optuna tool. Choosing directly, rather than
through ``enqueue_trial``, also saves the WAITING round trip per trial.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.samplers import GridSampler


class GridPointSampler(GridSampler):
    def __init__(self, search_space: dict[str, list[Any]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self.next_point: dict[str, Any] | None = None
        # Called once the new trial carries its grid_id (releases the claim lock).
        self.on_claimed: Callable[[], None] | None = None

    def point_of(self, grid_id: int) -> dict[str, Any]:
        return dict(zip(self._param_names, self._all_grids[grid_id]))

    def grid_id(self, point: dict[str, Any]) -> int:
        target = tuple(point[name] for name in self._param_names)
        for grid_id, values in enumerate(self._all_grids):
            if tuple(values) == target:
                return grid_id
        raise KeyError(f"{point!r} is not a point of the grid {self._search_space!r}")

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            self._assign(study, trial)
        finally:
            if self.on_claimed is not None:
                self.on_claimed()

    def _assign(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.system_attrs
        if "grid_id" in attrs:
            return  # a retry of a stale trial: it keeps its point
        if "fixed_params" in attrs:
            point = attrs["fixed_params"]
        elif self.next_point is not None:
            point = self.next_point
        else:
            super().before_trial(study, trial)
            return
        # Without a grid_id, GridSampler would neither count the point as visited nor
        # survive its own after_trial on the last point (KeyError 'grid_id').
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", self.grid_id(point))
