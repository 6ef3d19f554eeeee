"""Plain-text formatting shared by the CLI, the notes and the reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pct(value: float | None, digits: int = 1) -> str:
    """0.642 -> '64.2%'; None -> '-'."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def num(value: Any, fmt: str) -> str:
    """``format(value, fmt)``, or '-' for a missing value."""
    return "-" if value is None else format(value, fmt)


def format_seconds(seconds: float | None) -> str:
    """1h05m for long spans, 3m07s for short ones, '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(max(0.0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_table(rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns with a dashed rule under the first row (the header)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
