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
