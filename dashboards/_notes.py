"""Markdown notes shown in optuna-dashboard (``optuna_dashboard.save_note``): one per
trial (accuracy table, calibration, effective configuration, environment) and one on the
study (summary table with baselines, ensembles). Text is built from plain data so it is
testable; no storage URL or other secret is ever written into a note."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna_search.core import (
    EXTRA,
    HYPERPARAMETERS,
    SINCE_THE_FIRST_VERSION,
    Config,
    Hyperparameter,
    Metric,
    TrialRecord,
    markdown_table,
    num,
    one_answer,
    pct,
)
from optuna_search.dashboards._report_model import RungDecision, RungEntry
from optuna_search.dashboards._summary import SUMMARY_METRICS, SummaryRow, score_cells
from optuna_search.objectives import ALPHA


def field_head(metrics: Sequence[Metric] = EXTRA) -> list[str]:
    """The head of ``field_rows``' table."""
    return ["field", "test accuracy", "95% CI (Wilson)", *[m.title for m in metrics], "validation accuracy"]


def field_rows(
    r: TrialRecord, fields: list[str], *, metrics: Sequence[Metric] = EXTRA, overall: str = "overall"
) -> list[list[str]]:
    """A trial's scores per field (test accuracy, its Wilson interval, each of ``metrics``,
    validation accuracy) and their overall row: the trial's note and the model card's table."""
    assert r.test is not None
    t = r.test
    rows = []
    for f in fields:
        ci: list[float | None] = list(t.ci95.get(f) or [])
        ci += [None] * (2 - len(ci))
        rows.append(
            [f, pct(t.accuracy[f]), f"{pct(ci[0])} - {pct(ci[1])}"]
            + [m.show(t.value(m.name, f)) for m in metrics]
            + [pct(r.accuracy(f, "validation"))]
        )
    rows.append(
        [overall, pct(r.overall), ""]
        + [m.show(t.overall_of(m.name)) for m in metrics]
        + [pct(r.split_overall("validation"))]
    )
    return rows


def trial_note(r: TrialRecord, config: Config, fields: list[str], split: str = "test") -> str:
    lines = [f"## Trial {r.number}: {r.label}", ""]
    if r.test is not None:
        rows = field_rows(r, fields)
        rows[-1][0], rows[-1][1] = "**overall** (mean of fields)", f"**{rows[-1][1]}**"
        lines += [
            markdown_table(field_head(), rows),
            "",
        ]
        for f, label in r.test.single_label().items():
            lines += [f"**Warning: {one_answer(f, label)}.**", ""]
        lines.append(
            f"The study's objective is measured on **{split}**. All fields right: {pct(r.test.exact_match)}; "
            f"parse failures: {r.test.parse_failures} of {r.test.n} examples; answers naming no label of their "
            f"field's set: {sum(r.test.invalid_labels.values())}."
        )
        lines.append("")
        if r.test.calibration:
            cal = [
                [f, num(c.get("log_loss"), ".3f"), num(c.get("brier"), ".3f"), num(c.get("ece"), ".3f")]
                for f, c in r.test.calibration.items()
            ]
            lines += [
                "### Calibration (label probabilities, test)",
                "",
                markdown_table(["field", "log-loss", "Brier", "ECE (10 bins)"], cal),
                "",
            ]
    lines += ["### Effective configuration", "", markdown_table(["setting", "value"], _config_rows(r, config))]
    env = r.environment or {}
    lines += ["", "### Environment", "", markdown_table(["", ""], list(env.items()))]
    return "\n".join(lines) + "\n"


def _config_rows(r: TrialRecord, config: Config) -> list[list[Any]]:
    """The trial's effective configuration: the model and prompt, then every hyperparameter
    of the table as the trial trained with it (a study of an earlier version: the value it
    had before the hyperparameter existed), then what followed from them."""
    m, t = config.model, config.train
    p = r.effective_params or {}
    return [
        ["base model", m.name_or_path],
        ["revision", m.revision or "default"],
        ["prompt", f"{m.chat_template} chat template"],
        [
            "quantization",
            f"{m.quantization} (double quant {m.double_quant}), compute {r.compute_dtype or m.compute_dtype}",
        ],
        *[[h.name, _shown(_effective_value(h, p, r))] for h in HYPERPARAMETERS],
        [
            "effective batch",
            f"{r.batch_size or p.get('batch_size')} per device x "
            f"{r.gradient_accumulation or p.get('gradient_accumulation')} "
            f"accumulation x {r.gpus_per_trial or 1} GPU(s) = {_effective(r, p)}",
        ],
        ["max length", m.max_length],
        ["evaluation", config.eval.method],
        ["seed", t.seed],
        ["trainable parameters", num(r.trainable_params, ",")],
        ["optimizer steps", r.optimizer_steps],
        ["resumed from step", r.resumed_from_step or 0],
    ]


def _effective_value(h: Hyperparameter, p: dict[str, Any], r: TrialRecord) -> Any:
    if h.name in p:
        return p[h.name]
    if h.name == "lora_alpha" and r.lora_alpha is not None:
        return r.lora_alpha
    return None if h.legacy is SINCE_THE_FIRST_VERSION else h.legacy


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return num(value, "g") if isinstance(value, float) else str(value)


def _effective(r: TrialRecord, p: dict[str, Any]) -> Any:
    try:
        return (
            (r.batch_size or p["batch_size"])
            * (r.gradient_accumulation or p["gradient_accumulation"])
            * (r.gpus_per_trial or 1)
        )
    except (KeyError, TypeError):
        return "-"


def study_note(
    config: Config,
    rows: list[SummaryRow],
    baselines: dict[str, dict[str, float]] | None,
    n_eval: int,
    n_target: int,
    ensembles: list[dict[str, Any]] | None = None,
    headline: list[str] | None = None,
    validation_baselines: dict[str, dict[str, float]] | None = None,
    rungs: list[RungDecision] | None = None,
) -> str:
    """``headline``: where the study stands (n of N, pruned, the best or the front);
    baselines are shown on the test and (where stored) the validation subset; ``rungs``:
    successive halving's decisions and their evidence."""
    fields = list(config.data.fields)
    lines = [
        f"## {config.study.name}",
        "",
        *[f"**{line}**  " for line in headline or []],
        f"Sampler: {config.study.sampler}, pruner: {config.study.pruner}, schedule: {config.study.schedule}, "
        "objective(s): "
        f"{', '.join(config.study.objectives)} on the {config.eval.objective_split} split; {n_target} "
        f"{'grid points' if config.is_grid else 'trials'}.",
        f"Every row is scored on the same {n_eval} test examples ({_method(config)}).",
        "",
    ]
    head = (
        ["configuration"]
        + fields
        + ["overall"]
        + [m.title for m in SUMMARY_METRICS[1:]]
        + ["validation", "train loss", "eval loss", "status"]
    )
    table = [[r.point, *score_cells(r, fields), r.status.value] for r in rows]
    val = validation_baselines or {}
    for name, b in (baselines or {}).items():
        table.append(
            [f"baseline: {name}"]
            + [pct(b.get(f)) for f in fields]
            + [m.show(m.in_baseline(b)) for m in SUMMARY_METRICS]
            + [pct(val[name]["overall"]) if "overall" in val.get(name, {}) else "-"]
        )
        table[-1] += ["-"] * (len(head) - len(table[-1]))
    lines.append(markdown_table(head, table))
    for d in rungs or []:
        lines += ["", rung_line(d)]
    for e in ensembles or []:
        lines += ["", ensemble_line(e)]
    lines += ["", "Significance tests and the recommendation: `optuna-search report`."]
    return "\n".join(lines) + "\n"


def _method(config: Config) -> str:
    return "label scoring" if config.eval.method == "score" else "greedy decoding"


def rung_line(d: RungDecision) -> str:
    """'Rung 1 (25% of training, label_logprob after a 12-step cool-down): went on r=32
    (-0.41); left out r=4 (-0.93, worse at p = 0.001), r=8 (-0.45, p = 0.31: not shown
    worse)'."""

    def left(e: RungEntry) -> str:
        if e.p_worse is None:
            return f"{e.config} ({num(e.score, '.4f')})"
        verdict = "worse at" if e.p_worse < ALPHA else "not shown worse:"
        return f"{e.config} ({num(e.score, '.4f')}, {verdict} p = {e.p_worse:.2g})"

    cooled = f" after a {d.cooldown_steps}-step cool-down" if d.cooldown_steps else ""
    went = ", ".join(f"{e.config} ({num(e.score, '.4f')})" for e in d.entries if e.promoted)
    out = ", ".join(left(e) for e in d.entries if not e.promoted)
    return (
        f"Rung {d.rung + 1} ({100 * d.fraction:.0f}% of training, {d.metric}{cooled}): went on {went}"
        + (f"; left out {out}" if out else "")
        + " (paired t-test against the last one promoted on merit)."
        + (f" Adaptive promotion, last step: {d.steps[-1]}." if d.steps else "")
    )


SIGNALS = {
    "strong": "its order held",
    "weak": "its order held weakly",
    "none": "its last one ended as good as its best: the rung tells nothing here",
    "misleading": "its order reversed",
}


def evidence_line(rung: int, rungs: list[float], e: dict[str, Any], names: dict[str, str]) -> str:
    """One line: what a step of adaptive promotion (successive halving) learned at the
    next rung and decided (``names``: configuration key to its label)."""
    where = f"rung {rung + 1} ({100 * rungs[rung]:.0f}% of training)"
    went = ", ".join(names.get(k, k) for k in e.get("promoted", []) if k != e.get("probe")) or "none"
    if e["decision"] == "first step":
        probe = (
            f", and the rung's last one ({names.get(e['probe'], e['probe'])}) to test its order"
            if e.get("probe")
            else ""
        )
        return f"{where}: first step: the best by the rung go on ({went}){probe}"
    if not e.get("n"):
        return f"{where}: no evidence yet at the next rung; {e['decision']}: {went}"
    rho = "n/a" if e.get("rho") is None else f"{e['rho']:+.2f}"
    too = "the rung does not show these worse than the last promoted on merit; they go on too: "
    more = ", ".join(names.get(k, k) for k in e.get("promoted", []))
    best = names.get(e["best"], e["best"])
    if e["decision"] == "the rest go on" and rung + 2 == len(rungs):
        e = {**e, "decision": "the rest go on to the end"}
    return (
        f"{where}: at the next rung, {e['n']} that went on: Spearman's rho {rho} with the rung's order, best "
        f"{best}, {len(e.get('competitive', []))} not worse than it (paired test on the validation examples): "
        f"{e['signal']} signal ({SIGNALS[e['signal']]}); decided: {e['decision']}"
        + (f" ({too if e['decision'] == 'cut' else ''}{more})" if e.get("promoted") else "")
    )


def ensemble_line(e: dict[str, Any]) -> str:
    """'ensemble of r=4,8,16 (soft voting): 66.3% vs best single 64.0% (p = 0.42)'."""
    return (
        f"ensemble of {', '.join(e['members'])} ({e['method']} voting): {pct(e['overall'])} vs best single "
        f"{pct(e['best_single_overall'])} (McNemar p = {e['p_vs_best']:.2g}, all fields right; members chosen "
        f"on {e['chosen_on']})"
    )
