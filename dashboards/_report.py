"""The study report: data first (``collect_report``, testable), then Markdown and a
self-contained HTML file with plotly charts.

It fills the tables of the original study plan (performance summary with baselines,
training loss per epoch, overfitting analysis) and a recommendation that applies the
plan's decision criteria in order (overall accuracy, then severity accuracy, then the
overfitting signal, then inference speed), saying plainly when the best configuration
is not significantly better (exact McNemar, p < 0.05) than the others or the baselines.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from optuna_search.objectives._stats import mcnemar_exact, wilson_interval
from optuna_search.search._errors import UserError

ALPHA = 0.05


def _load_predictions(store, trial) -> dict[str, dict[str, Any]] | None:
    aid = trial.user_attrs.get("predictions_artifact_id")
    if store is None or not aid:
        return None
    try:
        with store.open_reader(aid) as fh:
            rows = [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line.strip()]
    except Exception:  # noqa: BLE001 - a missing artifact degrades the report, it does not stop it
        return None
    return {r["id"]: r for r in rows}


def _label(trial, keys: list[str]) -> str:
    return ",".join(f"{k}={trial.params[k]}" for k in keys if k in trial.params) or f"trial {trial.number}"


def collect_report(study, artifact_store=None) -> dict[str, Any]:
    from optuna.trial import TrialState

    cfg = study.user_attrs.get("config") or {}
    fields = list(cfg.get("data", {}).get("fields") or ["severity", "component", "reproducibility"])
    grid_keys = list(cfg.get("study", {}).get("grid", {}) or [])
    subset = study.user_attrs.get("eval_subset") or []
    ids = [s["id"] for s in subset]
    baselines = study.user_attrs.get("baselines") or {}
    baseline_preds = study.user_attrs.get("baseline_predictions") or {}

    rows, correctness, gold = [], {}, None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        ua = t.user_attrs
        row: dict[str, Any] = {
            "trial": t.number,
            "config": _label(t, grid_keys),
            "state": t.state.name,
            "lora_r": t.params.get("lora_r"),
            "lora_alpha": ua.get("lora_alpha"),
            "error": ua.get("error"),
            "start": t.datetime_start.isoformat() if t.datetime_start else None,
            "end": t.datetime_complete.isoformat() if t.datetime_complete else None,
        }
        if t.state == TrialState.COMPLETE:
            n = ua.get("eval_examples", len(ids))
            for f in fields:
                acc = ua.get(f"{f}_accuracy")
                row[f] = acc
                row[f"{f}_ci95"] = ua.get(f"{f}_accuracy_ci95") or (
                    list(wilson_interval(round(acc * n), n)) if acc is not None and n else None
                )
                row[f"{f}_macro_f1"] = ua.get(f"{f}_macro_f1")
            tl, el = ua.get("train_loss_per_epoch") or [], ua.get("eval_loss_per_epoch") or []
            row.update(
                overall=t.value,
                exact_match=ua.get("exact_match_accuracy"),
                train_loss_per_epoch=tl,
                eval_loss_per_epoch=el,
                final_train_loss=tl[-1] if tl else None,
                final_eval_loss=el[-1] if el else None,
                gap=(el[-1] - tl[-1]) if tl and el else None,
                eval_loss_rising=bool(len(el) >= 2 and el[-1] > min(el[:-1])),
                trainable_params=ua.get("trainable_params"),
                examples_per_second=ua.get("eval_examples_per_second"),
                parse_failures=ua.get("parse_failures"),
                minutes=(ua.get("train_seconds", 0) + ua.get("eval_seconds", 0)) / 60,
                eval_ids_sha256=ua.get("eval_ids_sha256"),
            )
            preds = _load_predictions(artifact_store, t)
            if preds is not None and [i for i in ids if i in preds] == ids:
                correctness[t.number] = _correct_vectors(preds, ids, fields)
                # Gold labels come with every predictions file; keep the first.
                gold = gold or {i: preds[i]["gold"] for i in ids}
        rows.append(row)

    complete = [r for r in rows if r["state"] == "COMPLETE"]
    digests = {r["eval_ids_sha256"] for r in complete if r.get("eval_ids_sha256")}
    if len(digests) > 1:
        raise UserError(
            "the study's trials were evaluated on different example sets; their accuracies are not comparable. "
            "Start a new study for the new evaluation set"
        )
    base_correct = {}
    for name, preds in baseline_preds.items():
        if gold is not None and all(i in preds for i in ids):
            base_correct[name] = {
                f: [preds[i][f] == gold[i][f] for i in ids] for f in fields
            }
            base_correct[name]["overall"] = [all(preds[i][f] == gold[i][f] for f in fields) for i in ids]

    comparisons = []
    for a in complete:
        for b in complete:
            if a["trial"] < b["trial"] and a["trial"] in correctness and b["trial"] in correctness:
                comparisons.append(_compare(a["config"], b["config"], correctness[a["trial"]], correctness[b["trial"]], fields))
    best = _choose_best(complete)
    vs_baselines = []
    if best is not None and best["trial"] in correctness:
        for name, bc in base_correct.items():
            vs_baselines.append(_compare(best["config"], f"baseline: {name}", correctness[best["trial"]], bc, fields))
    return {
        "study": study.study_name,
        "fields": fields,
        "n_eval": len(ids),
        "model": cfg.get("model", {}).get("name_or_path"),
        "demo": str(cfg.get("model", {}).get("name_or_path", "")).startswith("builtin:"),
        "rows": rows,
        "baselines": baselines,
        "comparisons": comparisons,
        "best": best,
        "best_vs_baselines": vs_baselines,
        "recommendation": _recommend(best, complete, comparisons, vs_baselines, fields, baselines),
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
    }


def _correct_vectors(preds: dict[str, dict[str, Any]], ids: list[str], fields: list[str]) -> dict[str, list[bool]]:
    out = {f: [preds[i]["predicted"].get(f) == preds[i]["gold"][f] for i in ids] for f in fields}
    # Overall per example: all fields right (the paired test needs one outcome per example).
    out["overall"] = [all(out[f][k] for f in fields) for k in range(len(ids))]
    return out


def _compare(name_a: str, name_b: str, a: dict[str, list[bool]], b: dict[str, list[bool]], fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"a": name_a, "b": name_b}
    for f in fields + ["overall"]:
        m = mcnemar_exact(a[f], b[f])
        out[f] = {"only_a": m.only_a, "only_b": m.only_b, "p": m.p_value, "significant": m.significant}
    return out


def _choose_best(complete: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plan's criteria, in order: overall accuracy, severity accuracy, the smaller
    train/eval gap (less overfitting), faster inference."""
    if not complete:
        return None

    def key(r):
        gap = r.get("gap")
        return (
            r.get("overall") or 0.0,
            r.get("severity") or 0.0,
            -(gap if gap is not None else math.inf),
            r.get("examples_per_second") or 0.0,
        )

    return max(complete, key=key)


def _recommend(best, complete, comparisons, vs_baselines, fields, baselines) -> list[str]:
    if best is None:
        return ["No configuration has a COMPLETE trial yet: nothing to recommend."]
    lines = [
        f"Best by the plan's criteria (overall accuracy, then severity, then overfitting, then speed): "
        f"**{best['config']}** with overall accuracy {_pct(best['overall'])} "
        f"(severity {_pct(best.get('severity'))})."
    ]
    ties = []
    for c in comparisons:
        if best["config"] not in (c["a"], c["b"]):
            continue
        other = c["b"] if c["a"] == best["config"] else c["a"]
        if not c["overall"]["significant"]:
            ties.append((other, c["overall"]["p"]))
    if len(complete) > 1:
        if ties:
            lines.append(
                "It is NOT significantly better than "
                + ", ".join(f"{o} (McNemar p = {p:.2f})" for o, p in ties)
                + " on these examples: the difference may be noise. Among configurations within noise of the "
                "best, the smallest rank is the cheapest to train and serve."
            )
        else:
            lines.append("It is significantly better (McNemar p < 0.05, examples with all fields right) than every other configuration.")
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
    if best.get("eval_loss_rising"):
        lines.append("Its validation loss rose in the last epoch: a sign of overfitting; fewer epochs may do as well.")
    return lines


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v, fmt) -> str:
    return "-" if v is None else format(v, fmt)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(rep: dict[str, Any]) -> str:
    fields = rep["fields"]
    md = [f"# Study report: {rep['study']}", ""]
    if rep["demo"]:
        md += ["> DEMO study: a tiny model on synthetic data. These numbers show the machinery, not model quality.", ""]
    md += [f"Base model: `{rep['model']}`. Every configuration and baseline is scored on the same "
           f"{rep['n_eval']} test examples (greedy decoding). Intervals: Wilson 95%.", ""]

    md += ["## Performance summary", ""]
    head = ["Configuration"] + [f.capitalize() for f in fields] + ["Overall", "Training loss", "Trainable params", "State"]
    rows = []
    for r in rep["rows"]:
        if r["state"] == "COMPLETE":
            cells = [f"{_pct(r[f])} [{_pct(r[f + '_ci95'][0])}, {_pct(r[f + '_ci95'][1])}]" if r.get(f + "_ci95") else _pct(r.get(f)) for f in fields]
            rows.append([r["config"]] + cells + [_pct(r["overall"]), _num(r["final_train_loss"], ".4f"), _num(r["trainable_params"], ","), "complete"])
        else:
            note = r["state"].lower() + (f": {r['error'][:80]}" if r.get("error") else "")
            rows.append([r["config"]] + ["-"] * len(fields) + ["-", "-", "-", note])
    for name, b in rep["baselines"].items():
        rows.append([f"baseline: {name}"] + [_pct(b.get(f)) for f in fields] + [_pct(b.get("overall")), "-", "-", "-"])
    md += [_md_table(head, rows), ""]
    md += ["Macro-F1 per field: " + "; ".join(
        f"{r['config']}: " + ", ".join(f"{f} {_num(r.get(f + '_macro_f1'), '.3f')}" for f in fields)
        for r in rep["rows"] if r["state"] == "COMPLETE") or "Macro-F1: no complete trial yet.", ""]

    complete = [r for r in rep["rows"] if r["state"] == "COMPLETE"]
    md += ["## Training loss per epoch", ""]
    n_ep = max((len(r["train_loss_per_epoch"]) for r in complete), default=0)
    md += [_md_table(["Configuration"] + [f"Epoch {i + 1}" for i in range(n_ep)],
                     [[r["config"]] + [_num(v, ".4f") for v in r["train_loss_per_epoch"]] + ["-"] * (n_ep - len(r["train_loss_per_epoch"])) for r in complete]), ""]

    md += ["## Overfitting analysis", ""]
    md += [_md_table(["Configuration", "Final train loss", "Final eval loss", "Gap (eval - train)", "Eval loss rose in last epoch"],
                     [[r["config"], _num(r["final_train_loss"], ".4f"), _num(r["final_eval_loss"], ".4f"), _num(r["gap"], "+.4f"),
                       "yes" if r["eval_loss_rising"] else "no"] for r in complete]), ""]

    md += ["## Inference speed", ""]
    md += [_md_table(["Configuration", "Eval examples/s", "Parse failures", "Minutes (train + eval)"],
                     [[r["config"], _num(r["examples_per_second"], ".2f"), str(r["parse_failures"]), _num(r["minutes"], ".1f")] for r in complete]), ""]

    md += ["## Significance (exact McNemar, paired on the same examples)", ""]
    if rep["comparisons"] or rep["best_vs_baselines"]:
        head = ["A", "B"] + [f.capitalize() for f in fields] + ["All fields right"]
        rows = []
        for c in rep["comparisons"] + rep["best_vs_baselines"]:
            rows.append([c["a"], c["b"]] + [
                f"{c[k]['only_a']} vs {c[k]['only_b']}, p={c[k]['p']:.3g}{' *' if c[k]['significant'] else ''}"
                for k in fields + ["overall"]])
        md += ["Cells: examples only A got right vs only B got right, p-value (* = p < 0.05).", "", _md_table(head, rows), ""]
    else:
        md += ["Fewer than two complete configurations with saved predictions: nothing to test yet.", ""]

    md += ["## Recommendation", ""] + [f"- {line}" for line in rep["recommendation"]] + [""]
    md += [f"_Generated {rep['generated']} by optuna-search._", ""]
    return "\n".join(md)


def build_figures(rep: dict[str, Any]) -> list[Any]:
    import plotly.graph_objects as go

    fields = rep["fields"]
    complete = [r for r in rep["rows"] if r["state"] == "COMPLETE"]
    names = [r["config"] for r in complete]
    figs = []

    fig = go.Figure()
    fig.add_bar(x=names, y=[r["overall"] for r in complete], name="overall")
    for name, b in rep["baselines"].items():
        fig.add_hline(y=b["overall"], line_dash="dash", annotation_text=f"{name} baseline")
    fig.update_layout(title="Overall accuracy by configuration (dashed: baselines)", yaxis_tickformat=".0%", yaxis_range=[0, 1])
    figs.append(fig)

    fig = go.Figure()
    for f in fields:
        ys = [r[f] for r in complete]
        hi = [r[f + "_ci95"][1] - r[f] for r in complete]
        lo = [r[f] - r[f + "_ci95"][0] for r in complete]
        fig.add_bar(x=names, y=ys, name=f, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo))
    fig.update_layout(barmode="group", title="Accuracy per field with Wilson 95% intervals", yaxis_tickformat=".0%", yaxis_range=[0, 1])
    figs.append(fig)

    fig = go.Figure()
    for r in complete:
        ep = list(range(1, len(r["train_loss_per_epoch"]) + 1))
        fig.add_scatter(x=ep, y=r["train_loss_per_epoch"], mode="lines+markers", name=f"{r['config']} train")
        fig.add_scatter(x=ep[: len(r["eval_loss_per_epoch"])], y=r["eval_loss_per_epoch"], mode="lines+markers",
                        name=f"{r['config']} eval", line=dict(dash="dash"))
    fig.update_layout(title="Loss per epoch (solid: train, dashed: validation)", xaxis_title="epoch", yaxis_title="loss")
    figs.append(fig)

    fig = go.Figure()
    fig.add_bar(x=names, y=[r["gap"] for r in complete])
    fig.update_layout(title="Overfitting signal: final eval loss - final train loss", yaxis_title="gap")
    figs.append(fig)

    timed = [r for r in rep["rows"] if r["start"]]
    fig = go.Figure()
    now = dt.datetime.now()
    colours = {"COMPLETE": "seagreen", "FAIL": "firebrick", "RUNNING": "orange", "WAITING": "grey"}
    for r in timed:
        start = dt.datetime.fromisoformat(r["start"])
        end = dt.datetime.fromisoformat(r["end"]) if r["end"] else now
        fig.add_bar(y=[f"#{r['trial']} {r['config']}"], x=[(end - start).total_seconds() * 1000], base=[start.isoformat()],
                    orientation="h", marker_color=colours.get(r["state"], "grey"), name=r["state"], showlegend=False)
    fig.update_layout(title="Trial timeline (green complete, red failed, orange running)", xaxis_type="date")
    figs.append(fig)
    return figs


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
