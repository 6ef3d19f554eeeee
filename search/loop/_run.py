"""A study run, from a config that preflight accepted to a finished (or budget-stopped)
study (the run request, ``_request``, gets it here):

    create_or_resume (warm start) -> Scheduler(TrialRunner(objective), Ledger) -> summary

``run_study`` is what one process does (the single process, or each of `--workers`); after
each trial it writes the study's note (optuna-dashboard). What `run` prints at the end
is ``search.front``'s (``summarize``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from optuna_search.core import Config, TrialRecord, format_seconds
from optuna_search.dashboards import (
    SummaryPoint,
    SummaryRow,
    progress_line,
    rung_decisions,
    study_note,
    summary_rows,
    verdict,
)
from optuna_search.objectives import frozen_for_a_study, make_objective
from optuna_search.search.loop._exit import EXIT_BUDGET, EXIT_USAGE
from optuna_search.search.loop._runner import TrialRunner
from optuna_search.search.loop._schedule import StudyState
from optuna_search.search.loop._scheduler import RunOutcome, Scheduler, study_state
from optuna_search.search.loop._workers import WorkerOptions, run_workers
from optuna_search.search.setup import (
    LARGE_GRID,
    Preflight,
    create_or_resume,
    stored_config_of,
    warm_start,
    warm_start_source,
)
from optuna_search.storage import (
    Commit,
    CommitKind,
    Ledger,
    adapter_candidates,
    adapter_here,
    artifact_store,
    read_meta,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")


def run_study(
    config: Config,
    pf: Preflight,
    *,
    retry_failed: bool = False,
    deadline: float | None = None,
    worker: str = "0",
    wait_for_others: bool = True,
    progress_interval: float = 10.0,
    remote: Any = None,
) -> RunOutcome:
    """What one process does (the single process, or each of `--workers`) with a config
    that preflight accepted: create or resume the study (a new one warm-started if asked),
    then run what it lacks, resuming interrupted trials from their checkpoints. With a
    ``deadline`` (``time.monotonic()``), start no trial that the estimate from earlier
    trials says cannot finish, and stop a running one at a checkpoint in time."""
    d = pf.data
    log.info(
        "data ok: %d train / %d validation / %d test examples; evaluation subsets: %d test, %d validation "
        "examples (seed %d%s)",
        len(d.dataset.train.examples),
        len(d.dataset.validation.examples),
        len(d.dataset.test.examples),
        len(d.test_subset),
        len(d.validation_subset),
        config.eval.seed,
        ", stratified" if config.eval.stratify else "",
    )
    source = warm_start_source(config, pf) if config.study.warm_start and stored_config_of(config) is None else None
    study, created = create_or_resume(config, pf)
    ledger = Ledger(study, list(config.data.fields), artifacts=artifact_store(config.storage.artifacts))
    if remote is not None:
        remote.on_commit(
            Commit(CommitKind.CREATE if created else CommitKind.OPEN)
        )  # the study itself, in the remote from the start
    if created and source is not None:
        warm_start(ledger, config, source)
    runner = TrialRunner(
        config,
        pf.data,
        make_objective(config),
        read_meta(study),
        deadline=deadline,
        worker=worker,
        progress_interval=progress_interval,
    )
    # The scheduler reconciles first: trials whose process died are failed (and, by the
    # storage's retry callback, re-queued WAITING) before it decides what is left to do,
    # so the retry of an interrupted trial is the first thing a new session does.
    with frozen_for_a_study():
        return Scheduler(study, config, runner, ledger, remote).run(
            retry_failed=retry_failed,
            deadline=deadline,
            wait_for_others=wait_for_others,
            after_trial=lambda st, state: _after_trial(st, config, state),
        )


def _after_trial(study: optuna.Study, config: Config, state: StudyState) -> None:
    write_study_note(study, config, state)
    seconds = state.trial_seconds()
    if config.is_grid and state.n_target > LARGE_GRID and seconds is not None and state.finished == 1:
        log.warning(
            'the grid has %d points; at %s per trial it takes about %s (a sampler, study.sampler = "tpe", '
            "explores such spaces in far fewer trials)",
            state.n_target,
            format_seconds(seconds),
            format_seconds(seconds * (state.n_target - state.finished)),
        )


def summary_points(state: StudyState, config: Config) -> list[SummaryPoint]:
    """The points' records, each adapter where it is on this machine (None: not here; a
    study read from a remote records the training machine's paths)."""
    fields = list(config.data.fields)

    def here(r: TrialRecord, point: dict[str, Any]) -> TrialRecord:
        if not r.adapter_dir:
            return r
        candidates = adapter_candidates(
            r.adapter_dir, config.train.output_dir, config.study.name, point, config.storage.url
        )
        found = adapter_here(candidates)
        return r.replace(adapter_dir=str(found) if found is not None else None)

    return [
        SummaryPoint(p.label, p.status, [here(TrialRecord.from_trial(t, fields), p.params) for t in p.trials])
        for p in state.points
    ]


def rows_of(state: StudyState, config: Config) -> list[SummaryRow]:
    return summary_rows(
        summary_points(state, config),
        list(config.data.fields),
        config.eval.objective_split,
        config.study.objectives[0],
    )


def run_with_workers(config: Config, pf: Preflight, workers: int, options: WorkerOptions) -> RunOutcome | None:
    """`run --workers N` (and the API's ``workers``): the study created once, before the
    workers race, then N worker processes given the config as the study reads it. None
    when a worker refused the config (it said why, with exit code 2)."""
    study, _ = create_or_resume(config, pf)
    log.info("starting %d workers", workers)
    codes = run_workers(config, workers, options)
    if EXIT_USAGE in codes:
        return None
    return RunOutcome(
        study, study_state(study, config), ran=sum(c == 0 for c in codes), budget_reached=EXIT_BUDGET in codes
    )


def write_study_note(study: optuna.Study, config: Config, state: StudyState) -> None:
    """The study's note in optuna-dashboard: the summary table with the baselines."""
    import optuna_dashboard

    rows = rows_of(state, config)
    meta = read_meta(study)
    headline = [_progress(config, state)] + verdict(rows, config, study)[:2]
    records = [r for p in state.points for r in p.records(list(config.data.fields))]
    halving = meta.halving or {}
    rungs = (
        rung_decisions(records, halving.get("promoted", {}), config, halving.get("decisions", {}))
        if config.halving
        else None
    )
    optuna_dashboard.save_note(
        study,
        study_note(
            config,
            rows,
            meta.baselines,
            len(meta.eval_subset or []),
            state.n_target,
            meta.ensembles,
            headline,
            meta.validation_baselines,
            rungs,
        ),
    )


def _progress(config: Config, state: StudyState) -> str:
    return progress_line(config.study.name, state.finished, state.n_target, config.is_grid, state.pruned)
