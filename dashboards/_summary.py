"""The results table of a study: computed as data (testable), then rendered as text."""

from __future__ import annotations

from typing import Any

FIELDS_DEFAULT = ["severity", "component", "reproducibility"]


def summary_rows(study, state: list[dict[str, Any]], fields: list[str]) -> list[dict[str, Any]]:
    """One row per grid point: its COMPLETE trial's numbers, or its status."""
    rows = []
    for r in state:
        t = r["complete"][-1] if r["complete"] else None
        row: dict[str, Any] = {"point": r["key"], "status": r["status"], "attempts": len(r["trials"])}
        params = dict(r["point"])
        row["lora_r"] = params.get("lora_r")
        if t is not None:
            ua = t.user_attrs
            row.update(
                trial=t.number,
                lora_alpha=ua.get("lora_alpha"),
                overall=t.value,
                **{f: ua.get(f"{f}_accuracy") for f in fields},
                train_loss=(ua.get("train_loss_per_epoch") or [None])[-1],
                eval_loss=(ua.get("eval_loss_per_epoch") or [None])[-1],
                trainable_params=ua.get("trainable_params"),
                minutes=(ua.get("train_seconds", 0) + ua.get("eval_seconds", 0)) / 60,
                parse_failures=ua.get("parse_failures"),
            )
        elif r["trials"] and "error" in r["trials"][-1].user_attrs:
            row["error"] = r["trials"][-1].user_attrs["error"]
        rows.append(row)
    return rows


def render_summary(rows: list[dict[str, Any]], fields: list[str], baselines: dict[str, dict[str, float]] | None) -> str:
    short = {"severity": "sev", "component": "comp", "reproducibility": "repro"}
    heads = ["grid point", "alpha"] + [short.get(f, f[:6]) for f in fields] + ["overall", "train_loss", "eval_loss", "trainable", "min", "status"]
    table = [heads]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        table.append(
            [r["point"], num(r.get("lora_alpha"), "g")]
            + [pct(r.get(f)) for f in fields]
            + [pct(r.get("overall")), num(r.get("train_loss"), ".4f"), num(r.get("eval_loss"), ".4f"),
               num(r.get("trainable_params"), ","), num(r.get("minutes"), ".1f"), r["status"]]
        )
    for name, b in (baselines or {}).items():
        table.append([f"baseline: {name}", "-"] + [pct(b.get(f)) for f in fields] + [pct(b.get("overall")), "-", "-", "-", "-", "-"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(heads))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r.get("overall") is not None]
    return max(done, key=lambda r: r["overall"]) if done else None


def status_rows(state: list[dict[str, Any]]) -> dict[str, Any]:
    """Per grid point: state, attempts, value, resumed step; hours spent and an ETA."""
    import datetime as dt

    now = dt.datetime.now()
    points, spent, done_durations = [], 0.0, []
    for r in state:
        best = max((t.value for t in r["complete"] if t.value is not None), default=None)
        resumed = max((t.user_attrs.get("resumed_from_step", 0) for t in r["trials"]), default=0)
        last = r["trials"][-1] if r["trials"] else None
        for t in r["trials"]:
            if t.datetime_start is None:
                continue
            end = t.datetime_complete or now
            spent += (end - t.datetime_start).total_seconds()
            if t in r["complete"] and t.datetime_complete:
                done_durations.append((t.datetime_complete - t.datetime_start).total_seconds())
        points.append({
            "point": r["key"], "status": r["status"], "attempts": len(r["trials"]), "value": best,
            "resumed_from_step": resumed,
            "note": (last.user_attrs.get("error") or ("time budget" if "stopped_by_time_budget" in last.user_attrs else ""))
            if last is not None and r["status"] != "complete" else "",
        })
    left = sum(p["status"] != "complete" for p in points)
    mean = sum(done_durations) / len(done_durations) if done_durations else None
    return {
        "points": points,
        "complete": len(points) - left,
        "total": len(points),
        "hours_spent": spent / 3600,
        "eta_hours": None if mean is None else left * mean / 3600,
    }


def render_status(s: dict[str, Any], study_name: str) -> str:
    rows = [["grid point", "state", "attempts", "overall", "resumed step", "note"]]
    for p in s["points"]:
        rows.append([p["point"], p["status"], str(p["attempts"]),
                     "-" if p["value"] is None else f"{100 * p['value']:.1f}%", str(p["resumed_from_step"]), p["note"][:60]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"study {study_name!r}: {s['complete']}/{s['total']} grid points complete"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    eta = "unknown until one trial completes" if s["eta_hours"] is None else f"{s['eta_hours']:.2f} h"
    lines.append(f"time spent on trials: {s['hours_spent']:.2f} h; ETA for the rest (serial): {eta}")
    return "\n".join(lines)
