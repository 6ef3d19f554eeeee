"""The results table of a study and its status: computed as data (testable), then
rendered as text. Input: per point, its status and its trials' records."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from optuna_search.core import TrialRecord
from optuna_search.core._text import num, pct, render_table

SHORT = {"severity": "sev", "component": "comp", "reproducibility": "repro"}


@dataclass(frozen=True)
class SummaryPoint:
    key: str
    status: str
    records: list[TrialRecord]

    @property
    def finished(self) -> TrialRecord | None:
        """The point's result: its COMPLETE trial, else its PRUNED one. A sampler that
        proposes the point again gets a duplicate trial that only points at the original
        (``duplicate_of``, no scores of its own): the original is the result."""
        for state in ("COMPLETE", "PRUNED"):
            done = [r for r in self.records if r.state == state]
            if done:
                return next((r for r in reversed(done) if r.duplicate_of is None), done[-1])
        return None

    @property
    def repeats(self) -> int:
        """How many times a sampler proposed the point again after it had run."""
        return sum(r.duplicate_of is not None for r in self.records)


def summary_rows(points: list[SummaryPoint], fields: list[str], split: str = "test") -> list[dict[str, Any]]:
    """One row per point: its finished trial's numbers (test accuracy per field and
    overall; ``value`` on the objective's split), or its status."""
    rows = []
    for p in points:
        row: dict[str, Any] = {"point": p.key, "status": p.status, "attempts": len(p.records) - p.repeats, "repeats": p.repeats}
        r = p.finished
        if r is not None:
            row.update(
                trial=r.number, lora_alpha=r.lora_alpha, overall=r.overall, value=r.split_overall(split),
                validation=r.split_overall("validation"), values=r.values,
                **{f: r.accuracy(f) for f in fields},
                train_loss=(r.train_loss_per_epoch or [None])[-1], eval_loss=(r.eval_loss_per_epoch or [None])[-1],
                trainable_params=r.trainable_params, minutes=r.minutes, parse_failures=(r.test.parse_failures if r.test else None),
                pruned_at=r.pruned_at_step,
            )
        elif p.records and p.records[-1].error:
            row["error"] = p.records[-1].error
        rows.append(row)
    return rows


def render_summary(rows: list[dict[str, Any]], fields: list[str], baselines: dict[str, dict[str, float]] | None,
                   grid: bool = True, validation_baselines: dict[str, dict[str, float]] | None = None) -> str:
    heads = ["grid point" if grid else "point", "alpha"] + [SHORT.get(f, f[:6]) for f in fields] + [
        "overall", "val", "train_loss", "eval_loss", "trainable", "min", "status"]
    table = [heads]
    for r in rows:
        status = r["status"] + (f" at {r['pruned_at']}" if r.get("pruned_at") else "") + (
            f" (proposed again {r['repeats']}x)" if r.get("repeats") else "")
        table.append(
            [r["point"], num(r.get("lora_alpha"), "g")] + [pct(r.get(f)) for f in fields]
            + [pct(r.get("overall")), pct(r.get("validation")), num(r.get("train_loss"), ".4f"), num(r.get("eval_loss"), ".4f"),
               num(r.get("trainable_params"), ","), num(r.get("minutes"), ".1f"), status]
        )
    for name, b in (baselines or {}).items():
        val = (validation_baselines or {}).get(name, {}).get("overall")
        table.append([f"baseline: {name}", "-"] + [pct(b.get(f)) for f in fields] + [pct(b.get("overall")),
                                                                                      pct(val) if val is not None else "-"] + ["-"] * 5)
    return render_table(table)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best COMPLETE row by the objective's value (ties: test overall)."""
    done = [r for r in rows if r.get("status") == "complete" and r.get("value") is not None]
    return max(done, key=lambda r: (r["value"], r.get("overall") or 0.0)) if done else None


def pareto_rows(rows: list[dict[str, Any]], front: set[int]) -> list[dict[str, Any]]:
    """The rows of the Pareto front's trials (``study.best_trials``)."""
    return [r for r in rows if r.get("trial") in front and r.get("status") == "complete"]


def status_rows(points: list[SummaryPoint], n_target: int, grid: bool, split: str = "test",
                front: list[str] | None = None) -> dict[str, Any]:
    """Per point: state, attempts, value, resumed step; n of N, pruned, hours spent, ETA."""
    now = dt.datetime.now()
    rows, spent, durations = [], 0.0, []
    for p in points:
        best = p.finished
        resumed = max((r.resumed_from_step or 0 for r in p.records), default=0)
        last = p.records[-1] if p.records else None
        for r in p.records:
            if r.datetime_start is None:
                continue
            spent += ((r.datetime_complete or now) - r.datetime_start).total_seconds()
            if r.state == "COMPLETE" and r.datetime_complete and r.duplicate_of is None:  # a repeat costs nothing
                durations.append((r.datetime_complete - r.datetime_start).total_seconds())
        note = ""
        if last is not None and best is None:
            note = last.error or ("time budget" if last.stopped_by_time_budget else "") or ("interrupted" if last.state == "FAIL" else "")
        rows.append({"point": p.key, "status": p.status, "attempts": len(p.records) - p.repeats,
                     "value": best.split_overall(split) if best else None, "resumed_from_step": resumed, "note": note})
    finished = sum(r.state in ("COMPLETE", "PRUNED") for p in points for r in p.records) if not grid else sum(
        p.finished is not None for p in points)
    left = max(0, n_target - finished)
    mean = sum(durations) / len(durations) if durations else None
    done_rows = [r for r in rows if r["value"] is not None and r["status"] == "complete"]
    return {
        "points": rows, "finished": finished, "total": n_target, "grid": grid,
        "pruned": sum(r.state == "PRUNED" for p in points for r in p.records),
        "best": max(done_rows, key=lambda r: r["value"]) if done_rows else None,
        "hours_spent": spent / 3600, "eta_hours": None if mean is None else left * mean / 3600, "split": split,
        "front": front,
    }


def render_status(s: dict[str, Any], study_name: str) -> str:
    rows = [["grid point" if s["grid"] else "point", "state", "attempts", "value", "resumed step", "note"]]
    for p in s["points"]:
        rows.append([p["point"], p["status"], str(p["attempts"]), pct(p["value"]), str(p["resumed_from_step"]), p["note"][:60]])
    lines = [progress_line(study_name, s["finished"], s["total"], s["grid"], s["pruned"]), render_table(rows)]
    if s["front"]:
        lines.append(f"Pareto front: {'; '.join(s['front'])}")
    elif s["best"] is not None:
        lines.append(f"best so far: {s['best']['point']}, overall accuracy {pct(s['best']['value'])} on {s['split']}")
    eta = "unknown until one trial completes" if s["eta_hours"] is None else f"{s['eta_hours']:.2f} h"
    lines.append(f"time spent on trials: {s['hours_spent']:.2f} h; ETA for the rest (serial): {eta}")
    return "\n".join(lines)


def progress_line(study_name: str, finished: int, total: int, grid: bool, pruned: int) -> str:
    """'study 'demo': 3/3 grid points complete' / '12/15 trials finished (2 pruned)'."""
    what = "grid points complete" if grid else "trials finished"
    return f"study {study_name!r}: {finished}/{total} {what}" + (f" ({pruned} pruned)" if pruned else "")
