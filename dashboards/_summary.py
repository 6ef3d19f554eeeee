"""The results table of a study and its status: computed as data (testable), then
rendered as text. Input: per point, its status and its trials' records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optuna_search.core import (
    EXTRA,
    METRICS,
    Config,
    Status,
    TrialRecord,
    best_record,
    num,
    one_answer,
    pct,
    render_table,
)
from optuna_search.storage import pareto_front, read_meta, study_flags

if TYPE_CHECKING:
    import optuna

SHORT = {"severity": "sev", "component": "comp", "reproducibility": "repro"}


SUMMARY_METRICS = [m for m in METRICS if m.in_summary]
"""The metrics the run's summary and the study's note show over the fields (accuracy first)."""


@dataclass(frozen=True)
class SummaryPoint:
    key: str
    status: Status
    records: list[TrialRecord]

    @property
    def finished(self) -> TrialRecord | None:
        """The point's result: its COMPLETE trial, else its PRUNED one. Earlier versions
        answered a sampler's repeated proposal with a duplicate trial that only points at
        the original (``duplicate_of``, no scores of its own): the original is the result."""
        for state in (Status.COMPLETE, Status.PRUNED):
            done = [r for r in self.records if r.state == state]
            if done:
                return next((r for r in reversed(done) if r.duplicate_of is None), done[-1])
        return None

    @property
    def repeats(self) -> int:
        """How many times a sampler proposed the point again after it had run (studies of
        earlier versions; samplers no longer repeat points)."""
        return sum(r.duplicate_of is not None for r in self.records)


@dataclass
class SummaryRow:
    point: str
    status: Status
    attempts: int
    repeats: int = 0
    trial: int | None = None
    lora_alpha: float | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)
    """Test accuracy per field."""
    overall: float | None = None
    """Overall test accuracy."""
    overalls: dict[str, float | None] = field(default_factory=dict)
    """Each metric of the table besides accuracy, over the fields, on test."""
    value: float | None = None
    """The study's first objective on its split (what chose the best)."""
    validation: float | None = None
    """Overall validation accuracy."""
    values: list[float] | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    trainable_params: int | None = None
    minutes: float | None = None
    parse_failures: int | None = None
    pruned_at: int | None = None
    rung: int | None = None
    error: str | None = None
    single_label: dict[str, str] = field(default_factory=dict)
    """Fields whose test predictions are all one label."""
    adapter_dir: str | None = None
    record: TrialRecord | None = None
    """The finished trial's record (what the best is chosen from)."""

    def overall_of(self, metric: str) -> float | None:
        """A metric of the table over the fields, on test."""
        return self.overall if metric == "accuracy" else self.overalls.get(metric)


def summary_rows(
    points: list[SummaryPoint], fields: list[str], split: str = "test", objective: str = "overall_accuracy"
) -> list[SummaryRow]:
    """One row per point: its finished trial's numbers (test scores per field and
    overall; ``value``: the first objective on the objective's split), or its status."""
    rows = []
    for p in points:
        row = SummaryRow(p.key, p.status, len(p.records) - p.repeats, p.repeats)
        r = p.finished
        if r is not None:
            row.trial, row.lora_alpha, row.values = r.number, r.lora_alpha, r.values
            row.accuracy = {f: r.accuracy(f) for f in fields}
            row.overall, row.validation = r.overall, r.split_overall("validation")
            row.value = r.objective_value(objective, split)
            row.overalls = {m.name: r.test.overall_of(m.name) for m in EXTRA} if r.test else {}
            row.train_loss = r.train_loss_per_epoch[-1] if r.train_loss_per_epoch else None
            row.eval_loss = r.eval_loss_per_epoch[-1] if r.eval_loss_per_epoch else None
            row.trainable_params, row.minutes = r.trainable_params, r.minutes
            row.parse_failures = r.test.parse_failures if r.test else None
            row.pruned_at, row.rung = r.pruned_at_step, r.rung
            row.single_label = r.test.single_label() if r.test else {}
            row.adapter_dir, row.record = r.adapter_dir, r
        elif p.records:
            row.error = p.records[-1].error
            row.rung = max((x.rung for x in p.records if x.rung is not None), default=None)
        rows.append(row)
    return rows


def render_summary(
    rows: list[SummaryRow],
    fields: list[str],
    baselines: dict[str, dict[str, float]] | None,
    grid: bool = True,
    validation_baselines: dict[str, dict[str, float]] | None = None,
) -> str:
    heads = (
        ["grid point" if grid else "point", "alpha"]
        + [SHORT.get(f, f if len(f) <= 12 else f[:11] + "…") for f in fields]  # a user's own field, readable
        + [m.head for m in SUMMARY_METRICS]
        + ["val", "train_loss", "eval_loss", "trainable", "min", "status"]
    )
    table = [heads]
    for r in rows:
        status = state_note(r.status.value, r.pruned_at, r.rung) + (
            f" (proposed again {r.repeats}x)" if r.repeats else ""
        )
        table.append(
            [r.point, num(r.lora_alpha, "g")]
            + score_cells(r, fields)
            + [num(r.trainable_params, ","), num(r.minutes, ".1f"), status]
        )
    for name, b in (baselines or {}).items():
        val = (validation_baselines or {}).get(name, {}).get("overall")
        table.append(
            [f"baseline: {name}", "-"]
            + [pct(b.get(f)) for f in fields]
            + [m.show(m.in_baseline(b)) for m in SUMMARY_METRICS]
            + [pct(val) if val is not None else "-"]
        )
        table[-1] += ["-"] * (len(heads) - len(table[-1]))
    return render_table(table)


def score_cells(r: SummaryRow, fields: list[str]) -> list[str]:
    """A row's scores as the tables show them: test accuracy per field, the summary's
    metrics over the fields (overall accuracy, macro-F1, ...), validation, the last
    epoch's training and validation loss."""
    return [pct(r.accuracy.get(f)) for f in fields] + [
        *[m.show(r.overall_of(m.name)) for m in SUMMARY_METRICS],
        pct(r.validation),
        num(r.train_loss, ".4f"),
        num(r.eval_loss, ".4f"),
    ]


def state_note(state: str, pruned_at: int | None, rung: int | None) -> str:
    """A state with where it stopped: 'pruned at 2' (a validation point), 'paused at rung 1'."""
    at_rung = rung is not None and state.lower() in ("pruned", "paused") and not pruned_at
    return state + (f" at {pruned_at}" if pruned_at else "") + (f" at rung {(rung or 0) + 1}" if at_rung else "")


def best_row(rows: list[SummaryRow], objective: str, split: str, fields: list[str]) -> SummaryRow | None:
    """The row of the study's best trial (``core.best_record``: the one rule every command
    uses)."""
    best = best_record(
        [r.record for r in rows if r.status == Status.COMPLETE and r.record is not None], objective, split, fields
    )
    return next((r for r in rows if best is not None and r.trial == best.number), None)


def pareto_rows(rows: list[SummaryRow], front: set[int]) -> list[SummaryRow]:
    """The rows of the Pareto front's trials (``study.best_trials``)."""
    return [r for r in rows if r.trial in front and r.status == Status.COMPLETE]


@dataclass
class StatusRow:
    point: str
    status: Status
    attempts: int
    value: float | None
    resumed_from_step: int
    note: str
    rung: int | None = None
    trial: int | None = None
    adapter_dir: str | None = None
    checkpoint_step: int | None = None
    """The step of the point's newest complete checkpoint (where it resumes), if any."""
    rung_value: float | None = None
    """Successive halving: the prune_on metric at the last rung it reached."""


@dataclass
class StatusReport:
    rows: list[StatusRow]
    finished: int
    total: int
    grid: bool
    pruned: int
    best: StatusRow | None
    hours_spent: float
    eta_hours: float | None
    split: str
    front: list[str] | None = None
    rungs: list[float] | None = None


@dataclass(frozen=True)
class StatusInput:
    """What the status table is made of besides the points."""

    n_target: int
    grid: bool
    split: str = "test"
    objective: str = "overall_accuracy"
    fields: list[str] = field(default_factory=list)
    front: list[str] | None = None
    rungs: list[float] | None = None
    finished: int = 0
    pruned: int = 0
    checkpoints: dict[str, int | None] = field(default_factory=dict)
    """The newest complete checkpoint's step per point (by its key)."""


def status_report(points: list[SummaryPoint], s: StatusInput, now: float | None = None) -> StatusReport:
    """Per point: state, attempts, value, resumed step, checkpoint (and rung); n of N,
    hours spent (the trials' segments, not their pauses), ETA from the completed trials."""
    now = time.time() if now is None else now
    rows, spent, durations = [], 0.0, []
    for p in points:
        spent += sum(r.seconds(now, paused=p.status == Status.PAUSED) for r in p.records)
        durations += [
            r.seconds(now)
            for r in p.records
            if r.state == Status.COMPLETE and r.duplicate_of is None and r.warm_start_from is None
        ]
        rows.append(_status_row(p, s))
    best = best_record([r for p in points for r in p.records], s.objective, s.split, s.fields)
    left = max(0, s.n_target - s.finished)
    mean = sum(durations) / len(durations) if durations else None
    return StatusReport(
        rows,
        s.finished,
        s.n_target,
        s.grid,
        s.pruned,
        next((r for r in rows if best is not None and r.trial == best.number), None),
        spent / 3600,
        None if mean is None else left * mean / 3600,
        s.split,
        s.front,
        s.rungs,
    )


def _status_row(p: SummaryPoint, s: StatusInput) -> StatusRow:
    best, last = p.finished, (p.records[-1] if p.records else None)
    note = ""
    if last is not None and best is None:
        note = (
            last.error
            or ("time budget" if last.stopped_by_time_budget else "")
            or (
                f"interrupted ({last.interrupted})"
                if last.interrupted
                else "interrupted"
                if last.state == Status.FAILED
                else ""
            )
        )
    if last is not None and last.warm_start_from:
        note = f"warm start: {last.warm_start_from}"
    reached = [(r.rung, (r.rung_values or {}).get(str(r.rung))) for r in p.records if r.rung is not None]
    rung, rung_value = max(reached, key=lambda x: x[0]) if reached else (None, None)
    return StatusRow(
        p.key,
        p.status,
        len(p.records) - p.repeats,
        best.objective_value(s.objective, s.split) if best else None,
        max((r.resumed_from_step or 0 for r in p.records), default=0),
        note,
        rung,
        best.number if best else None,
        best.adapter_dir if best else None,
        s.checkpoints.get(p.key),
        rung_value,
    )


def render_status(s: StatusReport, study_name: str, flags: str = "") -> str:
    """``flags``: what addresses the study again (storage, study name) in the commands it suggests."""
    head = (
        ["grid point" if s.grid else "point", "state", "attempts", "value", "resumed step", "checkpoint"]
        + (["rung", "rung value"] if s.rungs else [])
        + ["note"]
    )
    rows = [head]
    for p in s.rows:
        rung = (
            [
                f"{p.rung + 1}/{len(s.rungs)} ({100 * s.rungs[p.rung]:.0f}%)" if p.rung is not None else "-",
                num(p.rung_value, ".4f"),
            ]
            if s.rungs
            else []
        )
        rows.append(
            [
                p.point,
                p.status.value,
                str(p.attempts),
                pct(p.value),
                str(p.resumed_from_step),
                "-" if p.checkpoint_step is None else f"step {p.checkpoint_step}",
            ]
            + rung
            + [p.note[:60]]
        )
    lines = [progress_line(study_name, s.finished, s.total, s.grid, s.pruned), render_table(rows)]
    if s.front:
        lines.append(f"Pareto front: {'; '.join(s.front)}")
    elif s.best is not None:
        lines.append(f"best so far: {s.best.point} (trial {s.best.trial}), {pct(s.best.value)} on {s.split}")
        if s.best.adapter_dir:
            lines.append(
                f"its adapter: {s.best.adapter_dir}; a standalone model: optuna-search export-model{flags} "
                f"--trial {s.best.trial} --output DIR"
            )
    eta = "unknown until one trial completes" if s.eta_hours is None else f"{s.eta_hours:.2f} h"
    lines.append(
        f"time spent on trials: {s.hours_spent:.2f} h (training and evaluation; pauses not counted); "
        f"ETA for the rest (serial): {eta}"
    )
    return "\n".join(lines)


def progress_line(study_name: str, finished: int, total: int, grid: bool, pruned: int) -> str:
    """'study 'demo': 3/3 grid points complete' / '12/15 trials finished (2 pruned)'."""
    what = "grid points complete" if grid else "trials finished"
    return f"study {study_name!r}: {finished}/{total} {what}" + (f" ({pruned} pruned)" if pruned else "")


def verdict(rows: list[SummaryRow], config: Config, study: optuna.Study, *, commands: bool = True) -> list[str]:
    """The best (or the Pareto front), against the baselines, and what it answers;
    ``commands``: with the adapter's folder and the commands that go on from here (a model
    card that travels has neither)."""
    meta = read_meta(study)
    baselines = meta.baselines or {}
    if len(config.study.objectives) > 1:
        front = pareto_rows(rows, pareto_front(study))
        if not front:
            return []
        return [
            f"Pareto front ({', '.join(config.study.objectives)}): " + "; ".join(r.point for r in front),
            f"the trade-off between them and significance tests: optuna-search report{study_flags(config)}",
        ][: 2 if commands else 1]
    best = best_row(rows, config.study.objectives[0], config.eval.objective_split, list(config.data.fields))
    if best is None or best.overall is None:
        return []
    flags = study_flags(config)  # the commands below must find this study (the demo's is not the default)
    on = config.eval.objective_split
    objective = config.study.objectives[0]
    chosen = (
        f" (chosen on {on}: {objective} {_value(objective, best.value)})"
        if on == "validation" or objective != "overall_accuracy"
        else ""
    )
    out = [f"best: {best.point} (trial {best.trial}), overall accuracy {100 * best.overall:.1f}% on test" + chosen]
    if "majority" in baselines:
        maj = baselines["majority"]["overall"]
        out.append(
            f"best {'beats' if best.overall > maj else 'does NOT beat'} the majority-class baseline "
            f"({100 * maj:.1f}% overall)"
        )
    if "tfidf_logreg" in baselines:
        tfidf = baselines["tfidf_logreg"]["overall"]
        # A point or two on 100 examples is noise: said as a gap, judged in the report (McNemar).
        out.append(
            f"best vs the TF-IDF + logistic regression baseline ({100 * tfidf:.1f}% overall): "
            f"{100 * (best.overall - tfidf):+.1f} points"
        )
    majority_labels = next(iter((meta.baseline_predictions or {}).get("majority", {}).values()), {})
    for f, label in best.single_label.items():
        means = "".join(
            f"; mean {m.title} {m.show(v)}" for m in SUMMARY_METRICS[1:] if (v := best.overall_of(m.name)) is not None
        )
        out.append(
            f"warning: {one_answer(f, label, majority_labels.get(f) == label)}" + (f" ({means[2:]})" if means else "")
        )
    if not commands:
        return out
    if best.adapter_dir:
        out.append(
            f"its adapter: {best.adapter_dir}; a standalone model: optuna-search export-model{flags} --trial "
            f"{best.trial} "
            "--output DIR"
        )
    out.append(f"significance tests and the recommendation: optuna-search report{flags}")
    return out


def _value(objective: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if "accuracy" in objective else f"{v:.3f}"
