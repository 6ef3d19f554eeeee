"""optuna-search from Python: everything the command line does, for notebooks.

    import optuna_search

    config = optuna_search.load_config(preset="demo", sets=["study.grid={lora_r=[4, 8]}"])
    result = optuna_search.run(config)                  # the study, as `optuna-search run`
    print(result.summary)
    study = optuna_search.open_study("sqlite:///optuna-search-demo.db")
    print(study.best.label, study.best.overall, study.baselines["majority"]["overall"])
    predictor = optuna_search.Predictor.from_study("sqlite:///optuna-search-demo.db")
    for p in predictor.predict(["Title: Game crashes when saving\\n\\nDescription: ..."]):
        print(p.id, p.labels)

The command line is built on these functions. Everything else in the package is private.
Bad input raises :class:`UserError` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_search.core import Config, StudyLocation, StudyMeta, TrialRecord, UserError, best_record
from optuna_search.dashboards import Report, collect_report, write_report
from optuna_search.objectives import prefer_expandable_segments, quiet_libraries
from optuna_search.search.front import RunRequest, Summary, execute, load_config, print_summary
from optuna_search.search.front import status as _status
from optuna_search.search.front import validate as _validate
from optuna_search.search.remote import reading_location
from optuna_search.search.setup import open_for_reading
from optuna_search.search.use import (
    ModelSpec,
    Predictor,
    RowPrediction,
    export_study_bundle,
    run_ensemble,
    spec_from_study,
)
from optuna_search.search.use import export_model as _export_model
from optuna_search.storage import artifact_store, read_meta
from optuna_search.storage import pareto_front as front_numbers

if TYPE_CHECKING:
    import optuna

Prediction = RowPrediction


@dataclass
class StudyResult:
    """What `run` did: the study's table and verdict, and the exit code the CLI returns."""

    study_name: str
    summary: str
    exit_code: int
    """0 complete, 1 a point failed, 3 time budget reached (see the README's Commands)."""
    problems: list[str]
    records: list[TrialRecord]
    best: TrialRecord | None

    def print(self) -> int:
        return print_summary(Summary(self.summary, self.exit_code, self.problems))


def run(config: Config | RunRequest, **options: Any) -> StudyResult:
    """Create or resume the study ``config`` names and run what it lacks, as
    ``optuna-search run`` (the same front door). ``options`` are `run`'s flags by the
    names of :class:`RunRequest`'s fields, with the same defaults: ``retry_failed``,
    ``time_budget_s`` (seconds), ``workers`` (None: one per visible GPU, 1 on a CPU),
    ``oversubscribe``, ``progress_interval``, ``resume_from``. ``config`` may be a
    :class:`RunRequest` (``RunRequest.from_layers(preset=..., config_file=..., sets=[...],
    **options)``: the keys the user set are then known, exactly as the command line knows
    them)."""
    quiet_libraries()
    prefer_expandable_segments(os.environ)  # takes effect if CUDA has not started yet in this process
    if isinstance(config, RunRequest):
        if options:
            raise UserError("give run options to RunRequest.from_layers, not beside a RunRequest")
        request = config
    else:
        request = RunRequest.of(config, None, **options)
    result = execute(request)
    if result.outcome is None or result.summary is None:
        raise UserError(f"the run stopped with exit code {result.exit_code} before its summary (its log says why)")
    s = result.summary
    handle = StudyHandle(result.outcome.study, request.config)
    return StudyResult(request.config.study.name, s.text, result.exit_code, s.problems, handle.records, handle.best)


class StudyHandle:
    """A study opened for reading: its config, typed trial records, best, baselines."""

    def __init__(self, study: optuna.Study, config: Config) -> None:
        self.study = study
        self.config = config

    @property
    def records(self) -> list[TrialRecord]:
        fields = list(self.config.data.fields)
        return [TrialRecord.from_trial(t, fields) for t in self.study.get_trials(deepcopy=False)]

    @property
    def meta(self) -> StudyMeta:
        return read_meta(self.study)

    @property
    def best(self) -> TrialRecord | None:
        """The study's best trial (``core.best_record``, as `run`, `status`, `report` and
        `predict` choose it); None before one completes, or on a multi-objective study
        (see ``pareto_front``)."""
        if len(self.config.study.objectives) > 1:
            return None
        return best_record(
            self.records,
            self.config.study.objectives[0],
            self.config.eval.objective_split,
            list(self.config.data.fields),
        )

    @property
    def pareto_front(self) -> list[TrialRecord]:
        numbers = front_numbers(self.study)
        return [r for r in self.records if r.number in numbers]

    @property
    def baselines(self) -> dict[str, dict[str, float]]:
        """Per baseline (majority, tfidf_logreg): accuracy per field, overall, macro-F1."""
        return self.meta.baselines or {}

    def status(self) -> str:
        return _status(self.study, self.config)[0]

    def report(self, output: str | Path | None = None) -> Report:
        """The report's data; with ``output``, report.md and report.html written there."""
        rep = collect_report(self.study, self.config, artifact_store(self.config.storage.artifacts, create=False))
        if output is not None:
            write_report(rep, output, self.study)
        return rep

    def predictor(self, trial: str | int = "best", *, ensemble: bool = False) -> Predictor:
        return Predictor(spec_from_study(self.study, self.config, trial=trial, ensemble=ensemble))


def _location(
    storage: str | None,
    name: str | None,
    remote: str | None,
    *,
    artifacts: str | None = None,
    checkpoints: str | None = None,
) -> StudyLocation:
    if not storage and not remote:
        raise UserError("give where the study lives: its storage URL, or remote=URL")
    location = StudyLocation(storage or None, name or None, checkpoints or None, artifacts or None, remote or None)
    return reading_location(location) if remote else location


def open_study(
    storage: str | None = None,
    name: str | None = None,
    *,
    artifacts: str | None = None,
    checkpoints: str | None = None,
    remote: str | None = None,
) -> StudyHandle:
    """A study from where it lives: its storage URL (the name when it holds several), or
    ``remote=URL`` (a study in a remote, read into this machine's cache: nothing to copy).
    ``checkpoints``: the folder of its checkpoints when it moved (``train.output_dir``)."""
    opened = open_for_reading(_location(storage, name, remote, artifacts=artifacts, checkpoints=checkpoints))
    return StudyHandle(opened.study, opened.config)


def export_model(
    storage: str | None,
    output: str | Path,
    *,
    trial: str | int = "best",
    name: str | None = None,
    merge: bool = False,
    remote: str | None = None,
) -> str:
    """Write the trial's standalone model folder (as ``optuna-search export-model``)."""
    return _export_model(_location(storage, name, remote), str(trial), str(output), merge=merge)


def export_study(storage: str, output: str | Path, *, name: str | None = None) -> dict[str, object]:
    """Write the study to a new folder that a later session resumes from (as
    ``optuna-search export``; ``run(..., resume_from=output)`` takes it back)."""
    return export_study_bundle(_location(storage, name, None), str(output))


def ensemble(storage: str, *, trials: list[int] | None = None, top: int | None = None, name: str | None = None) -> str:
    """Soft and hard voting over trials from their stored predictions, stored on the study
    (as ``optuna-search ensemble``): ``trials`` by number, the ``top`` K, or every COMPLETE
    trial when neither is given."""
    opened = open_for_reading(_location(storage, name, None), mode="write")
    return run_ensemble(opened.study, opened.config, trials=trials, top=top)


def validate(config: Config) -> str:
    """What `optuna-search validate` prints: data, labels, prompts, memory, baselines."""
    return _validate(config)


__all__ = [
    "Config",
    "ModelSpec",
    "Prediction",
    "Predictor",
    "RunRequest",
    "StudyHandle",
    "StudyResult",
    "TrialRecord",
    "UserError",
    "ensemble",
    "export_model",
    "export_study",
    "load_config",
    "open_study",
    "run",
    "validate",
]
