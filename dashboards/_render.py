"""The study report as Markdown (``report.md``, and the tables of ``report.html``)."""

from __future__ import annotations

from typing import Any

from optuna_search.core._text import markdown_table, num, pct


def render_markdown(rep: dict[str, Any]) -> str:
    md = _header(rep)
    for section in (_performance, _calibration, _losses, _overfitting, _speed, _search, _pareto, _ensembles, _significance):
        md += section(rep)
    md += ["## Recommendation", ""] + [f"- {line}" for line in rep["recommendation"]] + [""]
    md += [f"_Generated {rep['generated']} by optuna-search._", ""]
    return "\n".join(md)


def _complete(rep: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rep["rows"] if r["state"] == "COMPLETE" and r.get("duplicate_of") is None and r.get("overall") is not None]


def _header(rep: dict[str, Any]) -> list[str]:
    md = [f"# Study report: {rep['study']}", ""]
    if rep["demo"]:
        md += ["> DEMO study: a tiny model on synthetic data. These numbers show the machinery, not model quality.", ""]
    method = "label scoring" if rep["method"] == "score" else "greedy decoding"
    md += [f"Base model: `{rep['model']}`. Sampler: {rep['sampler']}; objective(s): {', '.join(rep['objectives'])} on the "
           f"**{rep['split']}** split. Every configuration and baseline is scored on the same {rep['n_eval']} test "
           f"examples ({method}). Intervals: Wilson 95%.", ""]
    if rep["optimistic"]:
        md += [f"> The best of {len(_complete(rep))} trials was chosen on these test examples: its test score is "
               "optimistic (the winner's luck on them is part of it). Choose on validation "
               "(eval.objective_split = \"validation\") for an unbiased test score.", ""]
    return md


def _performance(rep: dict[str, Any]) -> list[str]:
    fields = rep["fields"]
    head = ["Configuration"] + [f.capitalize() for f in fields] + ["Overall", "Validation", "Training loss", "Trainable params", "State"]
    rows = []
    for r in rep["rows"]:
        if r["state"] == "COMPLETE" and r.get("overall") is not None:
            cells = [f"{pct(r[f])} [{pct(r[f + '_ci95'][0])}, {pct(r[f + '_ci95'][1])}]" if r.get(f + "_ci95") else pct(r.get(f)) for f in fields]
            state = "complete" + (f" (= trial {r['duplicate_of']})" if r.get("duplicate_of") is not None else "")
            rows.append([r["config"]] + cells + [pct(r["overall"]), pct(r.get("validation")), num(r["final_train_loss"], ".4f"),
                                                 num(r["trainable_params"], ","), state])
        else:
            note = r["state"].lower() + (f" at validation point {r['pruned_at']}" if r.get("pruned_at") else "") + (
                f": {r['error'][:80]}" if r.get("error") else "")
            rows.append([r["config"]] + ["-"] * len(fields) + ["-", pct(r.get("validation")), "-", "-", note])
    for name, b in rep["baselines"].items():
        vb = rep["validation_baselines"].get(name, {})
        rows.append([f"baseline: {name}"] + [pct(b.get(f)) for f in fields] + [pct(b.get("overall")), pct(vb.get("overall")), "-", "-", "-"])
    f1 = "; ".join(f"{r['config']}: " + ", ".join(f"{f} {num(r.get(f + '_macro_f1'), '.3f')}" for f in fields) for r in _complete(rep))
    return ["## Performance summary", "", "Test accuracy per field; Validation: overall accuracy on the validation subset.", "",
            markdown_table(head, rows), "", ("Macro-F1 per field: " + f1) if f1 else "Macro-F1: no complete trial yet.", ""]


def _calibration(rep: dict[str, Any]) -> list[str]:
    rows = [r for r in _complete(rep) if r.get("calibration")]
    if not rows:
        return []
    fields = rep["fields"]
    head = ["Configuration"] + [f"{f.capitalize()} log-loss / Brier / ECE" for f in fields]
    body = [[r["config"]] + [" / ".join(num(r["calibration"].get(f, {}).get(m), ".3f") for m in ("log_loss", "brier", "ece")) for f in fields]
            for r in rows]
    return ["## Calibration (label probabilities on the test examples)", "",
            "Lower is better for all three; ECE: expected calibration error of the top label over 10 confidence bins "
            "(reliability diagrams in report.html).", "", markdown_table(head, body), ""]


def _losses(rep: dict[str, Any]) -> list[str]:
    complete = _complete(rep)
    n_ep = max((len(r["train_loss_per_epoch"]) for r in complete), default=0)
    body = [[r["config"]] + [num(v, ".4f") for v in r["train_loss_per_epoch"]] + ["-"] * (n_ep - len(r["train_loss_per_epoch"])) for r in complete]
    return ["## Training loss per epoch", "", markdown_table(["Configuration"] + [f"Epoch {i + 1}" for i in range(n_ep)], body), ""]


def _overfitting(rep: dict[str, Any]) -> list[str]:
    body = [[r["config"], num(r["final_train_loss"], ".4f"), num(r["final_eval_loss"], ".4f"), num(r["gap"], "+.4f"),
             "yes" if r["eval_loss_rising"] else "no"] for r in _complete(rep)]
    return ["## Overfitting analysis", "", markdown_table(
        ["Configuration", "Final train loss", "Final eval loss", "Gap (eval - train)", "Eval loss rose in last epoch"], body), ""]


def _speed(rep: dict[str, Any]) -> list[str]:
    body = [[r["config"], num(r["examples_per_second"], ".2f"), str(r["parse_failures"]), num(r["minutes"], ".1f"),
             num(r.get("peak_memory_mb"), ",.0f")] for r in _complete(rep)]
    return ["## Inference speed", "", markdown_table(
        ["Configuration", "Eval examples/s", "Parse failures", "Minutes (train + eval)", "Peak memory MB"], body), ""]


def _search(rep: dict[str, Any]) -> list[str]:
    if rep["sampler"] == "grid" and not any(r.get("pruned_at") for r in rep["rows"]):
        return []
    rows = rep["rows"]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    steps = sum(r.get("optimizer_steps") or 0 for r in rows)
    saved = sum(r.get("optimizer_steps") or 0 for r in pruned)
    return ["## Search", "", f"{len(rows)} trials: {len(_complete(rep))} complete, {len(pruned)} pruned "
            f"({saved} of {steps} optimizer steps went to trials that were pruned), "
            f"{sum(r['state'] == 'FAIL' for r in rows)} failed or interrupted.", ""]


def _pareto(rep: dict[str, Any]) -> list[str]:
    if not rep["front"]:
        return []
    head = ["Configuration"] + rep["objectives"]
    body = [[r["config"]] + [num(v, ".4g") for v in r.get("values") or []] for r in rep["front"]]
    return ["## Pareto front", "", f"Trials no other trial beats on every objective ({len(rep['front'])} of {len(_complete(rep))}).",
            "", markdown_table(head, body), ""]


def _ensembles(rep: dict[str, Any]) -> list[str]:
    if not rep["ensembles"]:
        return []
    fields = rep["fields"]
    head = ["Ensemble", "Voting"] + [f.capitalize() for f in fields] + ["Overall", "Best single", "p vs best", "Members chosen on"]
    body = [[", ".join(e["members"]), e["method"]] + [pct(e["accuracy"].get(f)) for f in fields]
            + [pct(e["overall"]), pct(e["best_single_overall"]), f"{e['p_vs_best']:.3g}", e["chosen_on"]] for e in rep["ensembles"]]
    return ["## Ensembles", "", "From the members' stored predictions on the same test examples; p: exact McNemar, all fields right.",
            "", markdown_table(head, body), ""]


def _significance(rep: dict[str, Any]) -> list[str]:
    fields = rep["fields"]
    md = ["## Significance (exact McNemar, paired on the same examples)", ""]
    tests = rep["comparisons"] + rep["best_vs_baselines"]
    if not tests:
        return md + ["Fewer than two complete configurations with saved predictions: nothing to test yet.", ""]
    head = ["A", "B"] + [f.capitalize() for f in fields] + ["All fields right"]
    body = [[c["a"], c["b"]] + [f"{c[k]['only_a']} vs {c[k]['only_b']}, p={c[k]['p']:.3g}{' *' if c[k]['significant'] else ''}"
                                for k in fields + ["overall"]] for c in tests]
    return md + ["Cells: examples only A got right vs only B got right, p-value (* = p < 0.05).", "", markdown_table(head, body), ""]
