"""What `run` prints when it ends: where the study stands, its table against the
baselines, the verdict (``dashboards.verdict``), and the exit code with the problems that
decide it."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna_search.core import Config, TrialRecord
from optuna_search.dashboards import SummaryRow, progress_line, render_summary, verdict
from optuna_search.objectives import demo_note
from optuna_search.search.loop import (
    EXIT_BUDGET,
    EXIT_INCOMPLETE,
    EXIT_OK,
    Status,
    StudyState,
    rows_of,
    study_state,
)
from optuna_search.storage import read_meta, study_flags

if TYPE_CHECKING:
    import optuna


@dataclass
class Summary:
    text: str
    exit_code: int
    problems: list[str]


def summarize(study: optuna.Study, config: Config, state: StudyState, *, ran: int, budget_reached: bool) -> Summary:
    fields = list(config.data.fields)
    rows = rows_of(state, config)
    meta = read_meta(study)
    if ran or state.attempted < state.n_target:
        nothing = ""
    elif config.is_grid:
        nothing = " (nothing to run: every grid point already has a finished trial)"
    elif state.n_target < config.study.n_trials:
        nothing = (
            " (nothing to run: every point of the search space has a finished trial; "
            f"n_trials = {config.study.n_trials} was clipped to its {state.n_target} points)"
        )
    else:
        nothing = f" (nothing to run: {state.n_target} trials already finished; --n-trials extends the search)"
    lines = [progress_line(config.study.name, state.finished, state.n_target, config.is_grid, state.pruned) + nothing]
    lines.append(
        render_summary(
            rows, fields, meta.baselines, grid=config.is_grid, validation_baselines=meta.validation_baselines
        )
    )
    others = _outside_this_grid(study, config, meta.config, rows)
    lines += verdict(rows + others, config, study)
    if others:
        lines.append(
            f"the study also holds {len(others)} finished points outside this run's grid "
            f"({', '.join(r.point for r in others)}): the best above is the study's, the one status, report, "
            f"predict and export-model use; `optuna-search status{study_flags(config)}` lists every point"
        )
    if (note := demo_note(config)) is not None:
        lines.append(f"note: {note}")
    return Summary("\n".join(lines), *_exit_code(state, budget_reached))


def _outside_this_grid(
    study: optuna.Study, config: Config, stored: dict[str, Any] | None, rows: list[SummaryRow]
) -> list[SummaryRow]:
    """Rows of the study's finished points that this run's grid leaves out (``--set
    study.grid=...`` with a part of the study's grid): the study's best is one for every
    command, whatever grid a run was given."""
    if not config.is_grid:
        return []
    grid = {k: list(v) for k, v in config.study.grid.items()}
    for key, values in (((stored or {}).get("study") or {}).get("grid") or {}).items():
        if key in grid:
            grid[key] += [v for v in values if v not in grid[key]]
    if grid == config.study.grid:
        return []
    wider = dataclasses.replace(config, study=dataclasses.replace(config.study, grid=grid))
    here = {r.point for r in rows}
    return [r for r in rows_of(study_state(study, wider), wider) if r.point not in here and r.overall is not None]


def _exit_code(state: StudyState, budget_reached: bool) -> tuple[int, list[str]]:
    missing = [p for p in state.points if not p.status.finished]
    short = state.attempted < state.n_target
    if budget_reached and (missing or short):
        return EXIT_BUDGET, [
            f"time budget reached with {state.n_target - state.finished} left; run the same command "
            "in a new session to resume (export the study first if this machine goes away)"
        ]
    problems = []
    for p in missing:
        last = TrialRecord.from_trial(p.last, []) if p.last is not None else None
        why = last.error if last and last.error else ""
        problems.append(f"incomplete: {p.label} is {p.status.value}" + (f" ({why})" if why else ""))
    if any(p.status == Status.FAILED for p in missing):
        problems.append("re-run failed points with: optuna-search run --retry-failed")
    if short and not missing:
        problems.append(f"incomplete: {state.finished} of {state.n_target} trials finished")
    return (EXIT_INCOMPLETE if problems else EXIT_OK), problems


def print_summary(summary: Summary) -> int:
    print(summary.text)
    for line in summary.problems:
        print(line, file=sys.stderr)
    return summary.exit_code
