"""`optuna-search status`: where a study stands, without importing torch."""

from __future__ import annotations

from typing import Any

from optuna_search.core import Config
from optuna_search.core._params import short_point_key
from optuna_search.dashboards._summary import render_status, status_rows
from optuna_search.search._run import summary_points
from optuna_search.search._scheduler import Status, read_state
from optuna_search.search._space import make_sampler


def status(study: Any, config: Config) -> tuple[str, bool]:
    """The status table and whether the study is complete."""
    state = read_state(config, study.get_trials(deepcopy=False), make_sampler(config) if config.is_grid else None)
    fields = list(config.data.fields)
    front = None
    if len(config.study.objectives) > 1:
        best = {b.number for b in study.best_trials}
        front = [short_point_key(p.params) for p in state.points if any(t.number in best for t in p.complete)]
    rows = status_rows(summary_points(state, fields), state.n_target, config.is_grid, config.eval.objective_split, front)
    return render_status(rows, config.study.name), state.finished >= state.n_target and not state.of(Status.RUNNING, Status.WAITING)

