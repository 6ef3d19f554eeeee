"""The study report: data first (``collect_report``, testable), then Markdown and a
self-contained HTML file with plotly charts (``_figures``).

It fills the tables of the original study plan (performance summary with baselines,
training loss per epoch, overfitting analysis, inference speed) and adds what a search
needs: test and validation side by side, calibration when labels were scored, the
Pareto front of a multi-objective study, ensembles stored on the study, and exact
McNemar tests. The recommendation applies the plan's criteria in order (the objective,
then the first label field - severity in the flagship study -, then the overfitting
signal, then inference speed) and says plainly when the best is not significantly better
than the others, a baseline, or an ensemble.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from optuna_search.core import TrialRecord, UserError
from optuna_search.core._record import (
    ATTR_BASELINE_PREDICTIONS,
    ATTR_BASELINES,
    ATTR_CONFIG,
    ATTR_ENSEMBLES,
    ATTR_EVAL_SUBSET,
    ATTR_VALIDATION_BASELINES,
)
from optuna_search.dashboards._figures import build_figures
from optuna_search.dashboards._render import render_markdown
from optuna_search.objectives._ensemble import correctness
from optuna_search.objectives._metrics import Prediction
from optuna_search.objectives._stats import (
    mcnemar_exact,
    reliability_bins,
    wilson_interval,
)
from optuna_search.storage._artifacts import read_records

# Choosing the best of more trials than this on the test examples inflates its score.
OPTIMISM_TRIALS = 3


def load_predictions(store, record: TrialRecord, split: str = "test") -> dict[str, Prediction] | None:
    """A trial's stored predictions on one split, by example id (None if unavailable)."""
    artifact = record.predictions_artifact_id if split == "test" else record.validation_predictions_artifact_id
    rows = read_records(store, artifact)
    return None if rows is None else {r["id"]: Prediction.from_record(r) for r in rows}


def collect_report(study, artifact_store=None) -> dict[str, Any]:
    cfg = study.user_attrs.get(ATTR_CONFIG) or {}
    fields = list(cfg.get("data", {}).get("fields") or ["severity", "component", "reproducibility"])
    split = cfg.get("eval", {}).get("objective_split", "test")
    objectives = cfg.get("study", {}).get("objectives") or ["overall_accuracy"]
    ids = [s["id"] for s in study.user_attrs.get(ATTR_EVAL_SUBSET) or []]
    records = [TrialRecord.from_trial(t, fields) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    rows = [_row(r, fields) for r in records]
    _check_same_examples([row for row in rows if row["state"] == "COMPLETE"])
    complete = [row for row in rows if row["state"] == "COMPLETE" and row.get("duplicate_of") is None and row.get("overall") is not None]
    correct, gold, reliability = _correctness(artifact_store, records, complete, ids, fields)
    base_correct = _baseline_correctness(study.user_attrs.get(ATTR_BASELINE_PREDICTIONS) or {}, gold, ids, fields)
    comparisons = [_compare(a["config"], b["config"], correct[a["trial"]], correct[b["trial"]], fields)
                   for a in complete for b in complete if a["trial"] < b["trial"] and a["trial"] in correct and b["trial"] in correct]
    multi = len(objectives) > 1
    front = _front(study, complete) if multi else []
    best = _choose_best(complete, fields, split)
    baselines = study.user_attrs.get(ATTR_BASELINES) or {}
    vs_baselines = [_compare(best["config"], f"baseline: {name}", correct[best["trial"]], bc, fields)
                    for name, bc in base_correct.items()] if best is not None and best["trial"] in correct else []
    ensembles = study.user_attrs.get(ATTR_ENSEMBLES) or []
    return {
        "study": study.study_name, "fields": fields, "n_eval": len(ids), "split": split, "objectives": objectives,
        "sampler": cfg.get("study", {}).get("sampler", "grid"), "method": cfg.get("eval", {}).get("method", "generate"),
        "model": cfg.get("model", {}).get("name_or_path"),
        "demo": str(cfg.get("model", {}).get("name_or_path", "")).startswith("builtin:tiny"),
        "rows": rows, "baselines": baselines, "validation_baselines": study.user_attrs.get(ATTR_VALIDATION_BASELINES) or {},
        "comparisons": comparisons, "best": best, "best_vs_baselines": vs_baselines, "front": front,
        "ensembles": ensembles, "reliability": reliability,
        "optimistic": split == "test" and len(complete) > OPTIMISM_TRIALS,
        "recommendation": _recommend(best, complete, comparisons, vs_baselines, fields, baselines, front, ensembles, split),
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
    }


def _row(r: TrialRecord, fields: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trial": r.number, "config": r.label, "state": r.state, "lora_r": r.params.get("lora_r"), "lora_alpha": r.lora_alpha,
        "error": r.error, "duplicate_of": r.duplicate_of, "pruned_at": r.pruned_at_step, "values": r.values,
        "start": r.datetime_start.isoformat() if r.datetime_start else None,
        "end": r.datetime_complete.isoformat() if r.datetime_complete else None,
        "validation_curve": r.validation_accuracy_curve or [], "optimizer_steps": r.optimizer_steps,
        "minutes": r.minutes, "validation": r.split_overall("validation"), "eval_ids_sha256": r.eval_ids_sha256,
    }
    if r.state != "COMPLETE" or r.test is None:
        return row
    t = r.test
    for f in fields:
        row[f] = t.accuracy.get(f)
        row[f + "_ci95"] = t.ci95.get(f) or (list(wilson_interval(round(t.accuracy[f] * t.n), t.n)) if t.n else None)
        row[f + "_macro_f1"] = t.macro_f1.get(f)
        row[f + "_validation"] = r.accuracy(f, "validation")
    tl, el = r.train_loss_per_epoch or [], r.eval_loss_per_epoch or []
    row.update(
        overall=t.overall, exact_match=t.exact_match, calibration=t.calibration,
        train_loss_per_epoch=tl, eval_loss_per_epoch=el,
        final_train_loss=tl[-1] if tl else None, final_eval_loss=el[-1] if el else None,
        gap=(el[-1] - tl[-1]) if tl and el else None, eval_loss_rising=bool(len(el) >= 2 and el[-1] > min(el[:-1])),
        trainable_params=r.trainable_params, examples_per_second=r.eval_examples_per_second,
        eval_seconds_per_example=r.eval_seconds_per_example, peak_memory_mb=r.peak_memory_mb, train_seconds=r.train_seconds,
        parse_failures=t.parse_failures, artifact=r.predictions_artifact_id,
    )
    return row


def _check_same_examples(complete: list[dict[str, Any]]) -> None:
    if len({r["eval_ids_sha256"] for r in complete if r.get("eval_ids_sha256")}) > 1:
        raise UserError("the study's trials were evaluated on different example sets; their accuracies are not "
                        "comparable. Start a new study for the new evaluation set")


def _correctness(store, records: list[TrialRecord], complete: list[dict[str, Any]], ids: list[str], fields: list[str]):
    """Per trial, whether each test example is right (per field and all fields), the
    gold labels, and reliability-diagram bins per trial and field (label scoring)."""
    by_number = {r.number: r for r in records}
    correct, gold, reliability = {}, None, {}
    for row in complete:
        preds = load_predictions(store, by_number[row["trial"]])
        if preds is None or [i for i in ids if i in preds] != ids:
            continue
        correct[row["trial"]] = correctness(preds, ids, fields)
        gold = gold or {i: preds[i].gold for i in ids}
        if all(preds[i].probs is not None for i in ids):
            reliability[row["config"]] = {f: reliability_bins([preds[i].gold[f] for i in ids], [preds[i].probs[f] for i in ids]) for f in fields}
    return correct, gold, reliability


def _baseline_correctness(baseline_preds: dict[str, Any], gold, ids: list[str], fields: list[str]) -> dict[str, dict[str, list[bool]]]:
    out = {}
    for name, preds in baseline_preds.items():
        if gold is not None and all(i in preds for i in ids):
            out[name] = {f: [preds[i][f] == gold[i][f] for i in ids] for f in fields}
            out[name]["overall"] = [all(preds[i][f] == gold[i][f] for f in fields) for i in ids]
    return out


def _compare(name_a: str, name_b: str, a: dict[str, list[bool]], b: dict[str, list[bool]], fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"a": name_a, "b": name_b}
    for f in fields + ["overall"]:
        m = mcnemar_exact(a[f], b[f])
        out[f] = {"only_a": m.only_a, "only_b": m.only_b, "p": m.p_value, "significant": m.significant}
    return out


def _front(study, complete: list[dict[str, Any]]) -> list[dict[str, Any]]:
    numbers = {t.number for t in study.best_trials}
    return [r for r in complete if r["trial"] in numbers]


def _choose_best(complete: list[dict[str, Any]], fields: list[str], split: str) -> dict[str, Any] | None:
    """The plan's criteria, in order: overall accuracy on the objective's split, the
    first label field's accuracy (severity in the flagship study), the smaller
    train/eval gap (less overfitting), faster inference."""
    if not complete:
        return None

    def key(r):
        gap = r.get("gap")
        primary = (r.get("validation") if split == "validation" else r.get("overall")) or 0.0
        first = (r.get(fields[0] + "_validation") if split == "validation" else r.get(fields[0])) or 0.0
        return (primary, first, -(gap if gap is not None else math.inf), r.get("examples_per_second") or 0.0)

    return max(complete, key=key)


def _recommend(best, complete, comparisons, vs_baselines, fields, baselines, front, ensembles, split) -> list[str]:
    if best is None:
        return ["No configuration has a COMPLETE trial yet: nothing to recommend."]
    lines = []
    if front:
        lines.append("Pareto front (no trial is better on every objective): " + "; ".join(
            f"**{r['config']}** ({_values_text(r)})" for r in front)
            + ". Choose along it by what matters more: the first objective (accuracy) or the costs after it.")
    on = f"{split} " if split == "validation" else ""
    lines.append(
        f"Best by the plan's criteria (overall {on}accuracy, then {fields[0]}, then overfitting, then speed): "
        f"**{best['config']}** with overall test accuracy {_pct(best['overall'])} ({fields[0]} {_pct(best.get(fields[0]))})"
        + (f", validation {_pct(best.get('validation'))}" if best.get("validation") is not None else "") + ".")
    lines += _versus_others(best, complete, comparisons)
    lines += _versus_baselines(best, vs_baselines, baselines, fields)
    for e in ensembles:
        better = e["overall"] > (best.get("overall") or 0)
        lines.append(
            f"Ensemble of {', '.join(e['members'])} ({e['method']} voting): {_pct(e['overall'])} vs best single "
            f"{_pct(e['best_single_overall'])}, McNemar p = {e['p_vs_best']:.2g}"
            + ("" if e["p_vs_best"] < 0.05 else " (not significant)")
            + f". It costs {len(e['members'])} adapters to serve and {len(e['members'])} forward passes per example"
            + ("; worth it only if the gain holds on new data" if better else "; the single best trial is the better deal")
            + f" (members chosen on {e['chosen_on']}).")
    if best.get("eval_loss_rising"):
        lines.append("Its validation loss rose in the last epoch: a sign of overfitting; fewer epochs may do as well.")
    return lines


def _versus_others(best, complete, comparisons) -> list[str]:
    ties = [(c["b"] if c["a"] == best["config"] else c["a"], c["overall"]["p"]) for c in comparisons
            if best["config"] in (c["a"], c["b"]) and not c["overall"]["significant"]]
    if len(complete) <= 1:
        return []
    if ties:
        return ["It is NOT significantly better than " + ", ".join(f"{o} (McNemar p = {p:.2f})" for o, p in ties)
                + " on these examples: the difference may be noise. Among configurations within noise of the best, "
                "the smallest rank is the cheapest to train and serve."]
    return ["It is significantly better (McNemar p < 0.05, examples with all fields right) than every other configuration."]


def _versus_baselines(best, vs_baselines, baselines, fields) -> list[str]:
    lines = []
    for c in vs_baselines:
        name = c["b"].replace("baseline: ", "")
        acc = baselines.get(name, {}).get("overall")
        if best["overall"] is not None and acc is not None and best["overall"] <= acc:
            lines.append(f"WARNING: it does not beat the {name} baseline ({_pct(acc)} overall).")
        elif c["overall"]["significant"]:
            lines.append(f"It beats the {name} baseline ({_pct(acc)} overall) significantly (p = {c['overall']['p']:.3g}).")
        else:
            lines.append(f"It is above the {name} baseline ({_pct(acc)} overall) but NOT significantly (p = {c['overall']['p']:.2f}).")
    for f in fields:
        for c in vs_baselines:
            if c[f]["significant"] and c[f]["only_b"] > c[f]["only_a"]:
                lines.append(f"On {f} it is significantly worse than {c['b']}.")
    return lines


def _values_text(r: dict[str, Any]) -> str:
    return ", ".join(f"{v:.4g}" for v in r.get("values") or [])


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render_html(rep: dict[str, Any], markdown_text: str) -> str:
    import html

    figs = build_figures(rep)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs)]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Study report: {html.escape(rep['study'])}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto} pre{white-space:pre-wrap}</style>"
        "</head><body>\n"
        f"<h1>Study report: {html.escape(rep['study'])}</h1>\n"
        + "\n".join(f"<div class='chart'>{p}</div>" for p in parts)
        + f"\n<h2>Tables</h2>\n<pre>{html.escape(markdown_text)}</pre>\n</body></html>\n"
    )


def write_report(rep: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(rep)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(render_html(rep, md), encoding="utf-8")
    return md_path, html_path


__all__ = ["collect_report", "load_predictions", "render_markdown", "write_report"]
