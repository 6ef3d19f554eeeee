"""`optuna-search run`, from a resolved config to a finished (or budget-stopped) study:

    preflight -> create_or_resume -> Scheduler(TrialRunner(QLoRAObjective)) -> summary

``run_study`` is what one process does (the single process, or each of `--workers`);
``summarize`` turns the study's state into the printed table and the exit code.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from optuna_search.core import Config, TrialRecord
from optuna_search.core._params import short_point_key
from optuna_search.core._record import (
    ATTR_BASELINES,
    ATTR_ENSEMBLES,
    ATTR_EVAL_SUBSET,
    ATTR_VALIDATION_BASELINES,
)
from optuna_search.core._text import format_seconds
from optuna_search.dashboards._notes import study_note
from optuna_search.dashboards._summary import (
    SummaryPoint,
    best_row,
    pareto_rows,
    progress_line,
    render_summary,
    summary_rows,
)
from optuna_search.objectives._qlora import QLoRAObjective
from optuna_search.search._open import create_or_resume
from optuna_search.search._preflight import LARGE_GRID, preflight
from optuna_search.search._scheduler import RunOutcome, Scheduler, Status, StudyState
from optuna_search.search._space import distributions
from optuna_search.search._trial import TrialRunner

log = logging.getLogger("optuna_search")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3


def run_study(config: Config, *, retry_failed: bool = False, time_budget_s: float | None = None,
              wait_for_others: bool = True) -> RunOutcome:
    """Run what the study lacks, resuming interrupted trials from their checkpoints.
    With ``time_budget_s``, start no trial that the estimate from earlier trials says
    cannot finish, and stop a running one at a checkpoint in time."""
    from optuna.storages import fail_stale_trials

    deadline = time.monotonic() + time_budget_s if time_budget_s else None
    pf = preflight(config)
    d = pf.data
    log.info("data ok: %d train / %d validation / %d test examples; evaluation subsets: %d test, %d validation examples (seed %d)",
             len(d.dataset.train.examples), len(d.dataset.validation.examples), len(d.dataset.test.examples),
             len(d.test_subset), len(d.validation_subset), config.eval.seed)
    study = create_or_resume(config, pf)
    # Reconcile at once: trials whose process died are failed (and, by the storage's
    # retry callback, re-queued as WAITING) before we decide what is left to do, so the
    # retry of an interrupted trial is the first thing a new session does.
    fail_stale_trials(study)
    runner = TrialRunner(study, config, pf.data, QLoRAObjective(config), deadline)
    scheduler = Scheduler(study, config, runner, distributions(config))
    return scheduler.run(retry_failed=retry_failed, deadline=deadline, wait_for_others=wait_for_others,
                         after_trial=lambda st, state: _after_trial(st, config, state))


def _after_trial(study: Any, config: Config, state: StudyState) -> None:
    write_study_note(study, config, state)
    seconds = state.trial_seconds()
    if config.is_grid and state.n_target > LARGE_GRID and seconds is not None and state.finished == 1:
        log.warning("the grid has %d points; at %s per trial it takes about %s (a sampler, study.sampler = \"tpe\", "
                    "explores such spaces in far fewer trials)", state.n_target, format_seconds(seconds),
                    format_seconds(seconds * (state.n_target - state.finished)))


def summary_points(state: StudyState, fields: list[str]) -> list[SummaryPoint]:
    return [SummaryPoint(short_point_key(p.params), p.status.value, [TrialRecord.from_trial(t, fields) for t in p.trials])
            for p in state.points]


def write_study_note(study: Any, config: Config, state: StudyState) -> None:
    """The study's note in optuna-dashboard: the summary table with the baselines."""
    import optuna_dashboard

    fields = list(config.data.fields)
    rows = summary_rows(summary_points(state, fields), fields, config.eval.objective_split)
    baselines = study.user_attrs.get(ATTR_BASELINES)
    headline = [_progress(config, state)] + _verdict(rows, config, baselines, study)[:2]
    optuna_dashboard.save_note(study, study_note(config, rows, baselines, len(study.user_attrs.get(ATTR_EVAL_SUBSET) or []),
                                                 state.n_target, study.user_attrs.get(ATTR_ENSEMBLES), headline,
                                                 study.user_attrs.get(ATTR_VALIDATION_BASELINES)))


@dataclass
class Summary:
    text: str
    exit_code: int
    problems: list[str]


def summarize(study: Any, config: Config, state: StudyState, *, ran: int, budget_reached: bool) -> Summary:
    fields = list(config.data.fields)
    split = config.eval.objective_split
    rows = summary_rows(summary_points(state, fields), fields, split)
    baselines = study.user_attrs.get(ATTR_BASELINES)
    nothing = ("every grid point already has a finished trial" if config.is_grid
               else f"{state.n_target} trials already finished; --n-trials extends the search")
    lines = [_progress(config, state) + (f" (nothing to run: {nothing})" if not ran and state.finished >= state.n_target else "")]
    lines.append(render_summary(rows, fields, baselines, grid=config.is_grid,
                                validation_baselines=study.user_attrs.get(ATTR_VALIDATION_BASELINES)))
    lines += _verdict(rows, config, baselines, study)
    if config.model.name_or_path == "builtin:tiny-mistral":
        lines.append("note: this is the DEMO study (tiny model, synthetic data): it shows the machinery, not model quality")
    return Summary("\n".join(lines), *_exit_code(state, budget_reached))


def _progress(config: Config, state: StudyState) -> str:
    pruned = sum(t.state.name == "PRUNED" for p in state.points for t in p.trials)
    return progress_line(config.study.name, state.finished, state.n_target, config.is_grid, pruned)


def _verdict(rows: list[dict[str, Any]], config: Config, baselines: dict[str, Any] | None, study: Any) -> list[str]:
    if len(config.study.objectives) > 1:
        front = pareto_rows(rows, {t.number for t in study.best_trials})
        if not front:
            return []
        return [f"Pareto front ({', '.join(config.study.objectives)}): " + "; ".join(r["point"] for r in front),
                "the trade-off between them and significance tests: optuna-search report"]
    best = best_row(rows)
    if best is None:
        return []
    on = "validation" if config.eval.objective_split == "validation" else "test"
    out = [f"best: {best['point']} (trial {best['trial']}), overall accuracy {100 * best['overall']:.1f}% on test"
           + (f" (chosen on validation: {100 * best['value']:.1f}%)" if on == "validation" else "")]
    if baselines and "majority" in baselines:
        maj = baselines["majority"]["overall"]
        out.append(f"best {'beats' if best['overall'] > maj else 'does NOT beat'} the majority-class baseline ({100 * maj:.1f}% overall)")
    if baselines and "tfidf_logreg" in baselines:
        tfidf = baselines["tfidf_logreg"]["overall"]
        gap = 100 * (best["overall"] - tfidf)
        # A point or two on 100 examples is noise: said as a gap, judged in the report (McNemar).
        out.append(f"best vs the TF-IDF + logistic regression baseline ({100 * tfidf:.1f}% overall): {gap:+.1f} points")
    out.append("significance tests and the recommendation: optuna-search report")
    return out


def _exit_code(state: StudyState, budget_reached: bool) -> tuple[int, list[str]]:
    missing = [p for p in state.points if not p.status.finished]
    short = state.finished < state.n_target
    if budget_reached and (missing or short):
        return EXIT_BUDGET, [f"time budget reached with {state.n_target - state.finished} left; run the same command "
                             "in a new session to resume (export the study first if this machine goes away)"]
    problems = []
    for p in missing:
        why = p.last.user_attrs.get("error", "") if p.last is not None else ""
        problems.append(f"incomplete: {short_point_key(p.params)} is {p.status.value}" + (f" ({why})" if why else ""))
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
