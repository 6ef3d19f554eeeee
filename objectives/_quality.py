"""Data checks run before any model is loaded: distributions, empty inputs, duplicates,
and overlap between training and evaluation splits (leakage).

Label problems (unparseable rows, vocabulary mismatches) are errors raised while loading
(``_data``); what is found here is reported as warnings with file and line, because real
bug trackers do contain duplicates and a user must decide what to do with them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from optuna_search.objectives._data import Dataset, Example


def _norm_text(e: Example) -> str:
    return " ".join(e.input.split()).lower()


def _exact_text(e: Example) -> str:
    return e.input


def check_quality(ds: Dataset) -> dict[str, Any]:
    report: dict[str, Any] = {"distribution": {}, "empty_inputs": {}, "duplicates": {}, "overlap": {}}
    for f in ds.fields:
        report["distribution"][f] = {
            s: dict(sorted(split.label_counts(f).items(), key=lambda kv: (-kv[1], kv[0])))
            for s, split in ds.splits.items()
        }
    for s, split in ds.splits.items():
        report["empty_inputs"][s] = [f"{split.path}:{e.line}" for e in split.examples if not e.input.strip()]
        dup = {}
        for kind, key in (("exact", _exact_text), ("normalised", _norm_text)):
            groups: dict[str, list[Example]] = defaultdict(list)
            for e in split.examples:
                groups[key(e)].append(e)
            repeated = [g for g in groups.values() if len(g) > 1]
            dup[kind] = {
                "rows": sum(len(g) - 1 for g in repeated),
                # Same text, different labels: the model is asked to learn a contradiction.
                "conflicting": sum(1 for g in repeated if len({tuple(sorted(e.labels.items())) for e in g}) > 1),
                "examples": [[f"{split.path}:{e.line}" for e in g] for g in repeated[:5]],
            }
        report["duplicates"][s] = dup
    report["validation_is_test"] = ds.validation.path == ds.test.path
    train_texts = {_norm_text(e) for e in ds.train.examples}
    for s in ("validation", "test"):
        split = ds.splits[s]
        if split.path == ds.train.path:
            report["overlap"][s] = {"rows": len(split.examples), "same_file": True, "examples": []}
            continue
        leaked = [e for e in split.examples if _norm_text(e) in train_texts]
        report["overlap"][s] = {
            "rows": len(leaked),
            "same_file": False,
            "examples": [f"{split.path}:{e.line}" for e in leaked[:5]],
        }
    return report


def quality_warnings(report: dict[str, Any]) -> list[str]:
    out = []
    for s, rows in report["empty_inputs"].items():
        if rows:
            out.append(f"{s}: {len(rows)} rows with an empty report text (e.g. {', '.join(rows[:3])})")
    for s, dup in report["duplicates"].items():
        n = dup["normalised"]
        if n["rows"]:
            first = ", ".join(n["examples"][0]) if n["examples"] else ""
            out.append(
                f"{s}: {n['rows']} duplicate rows (same text ignoring case/whitespace; {dup['exact']['rows']} exact), "
                f"{n['conflicting']} of them with conflicting labels (e.g. {first})"
            )
    for s, ov in report["overlap"].items():
        if ov["same_file"]:
            out.append(f"{s} is the training file itself: its scores measure memorisation, not generalisation")
        elif ov["rows"]:
            out.append(f"{s}: {ov['rows']} rows also in train (leakage; e.g. {', '.join(ov['examples'][:3])})")
    if report.get("validation_is_test"):
        out.append(
            "validation and test are the same file: the per-epoch eval loss and the final score "
            "come from the same examples (fine for a comparison of ranks, not for choosing epochs)"
        )
    return out


def render_distribution(report: dict[str, Any]) -> str:
    lines = []
    for f, per_split in report["distribution"].items():
        lines.append(f"  {f}:")
        for s, counts in per_split.items():
            total = sum(counts.values())
            parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.items())
            lines.append(f"    {s:<10} (n={total}): {parts}")
    return "\n".join(lines)
