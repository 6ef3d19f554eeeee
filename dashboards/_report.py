"""The study report: data first (``collect_report``, testable dataclasses), then Markdown
(``_render``) and a self-contained HTML file with plotly charts (``_figures``).

It fills the tables of the original study plan (performance summary with baselines,
training loss per epoch, overfitting analysis, inference speed) and adds what a search
needs: test and validation side by side, macro-F1 and balanced accuracy (which see
through a model that answers the majority label), calibration when labels were scored,
whether the early validation points predict the end (Spearman's rho), the Pareto front,
ensembles, parameter importances, and exact McNemar tests with Holm's correction for
the many comparisons. The recommendation applies the plan's criteria in order (the
objective, then the first label field - severity in the flagship study -, then the
overfitting signal, then inference speed) and says plainly when the best is not
significantly better than the others, a baseline, or an ensemble.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_search.core import (
    EXTRA,
    Config,
    Status,
    StudyMeta,
    TrialRecord,
    UserError,
    best_record,
    one_answer,
    point_key,
    short_point_key,
)
from optuna_search.dashboards._figures import build_figures
from optuna_search.dashboards._notes import evidence_line
from optuna_search.dashboards._render import render_markdown
from optuna_search.dashboards._report_model import (
    Comparison,
    EarlySignal,
    Report,
    ReportRow,
    RungDecision,
    RungEntry,
    Test,
)
from optuna_search.dashboards._summary import SUMMARY_METRICS
from optuna_search.objectives import (
    ALPHA,
    Prediction,
    correctness,
    holm,
    mcnemar_exact,
    paired_worse,
    reliability_bins,
    wilson_interval,
)
from optuna_search.storage import ArtifactUnreadable, pareto_front, read_records, study_flags

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")

# Spearman's rho between early and final validation needs this many configurations.
MIN_FOR_RHO = 4


def load_predictions(store: Any, record: TrialRecord, split: str = "test") -> dict[str, Prediction] | None:
    """A trial's stored predictions on one split, by example id (None if unavailable: a
    recorded artifact that cannot be read is a warning naming the trial and what that
    leaves out)."""
    artifact = record.predictions_artifact_id if split == "test" else record.validation_predictions_artifact_id
    try:
        rows = read_records(store, artifact)
    except ArtifactUnreadable as e:
        log.warning(
            "trial %s: its %s predictions cannot be read (%s); left out: its significance tests, calibration, "
            "per-example errors and ensembles with it",
            record.number,
            split,
            e,
        )
        return None
    return None if rows is None else {r["id"]: Prediction.from_record(r) for r in rows}


def collect_report(study: optuna.Study, config: Config, artifact_store: Any = None) -> Report:
    fields = list(config.data.fields)
    meta = StudyMeta.from_user_attrs(study.user_attrs)
    halving = meta.halving or {}
    ids = [s["id"] for s in meta.eval_subset or []]
    records = [
        TrialRecord.from_trial(t, fields) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]
    rows = [_row(r, fields, config) for r in records]
    _check_same_examples([r for r in rows if r.state == Status.COMPLETE])
    complete = [r for r in rows if r.complete]
    correct, gold, reliability = _correctness(artifact_store, complete, ids, fields)
    base_correct = _baseline_correctness(meta.baseline_predictions or {}, gold, ids, fields)
    comparisons = _holm_family(
        [
            _compare(a.config, b.config, correct[a.trial], correct[b.trial], fields)
            for a in complete
            for b in complete
            if a.trial < b.trial and a.trial in correct and b.trial in correct
        ],
        fields,
    )
    front = _front(study, complete) if len(config.study.objectives) > 1 else []
    best = _choose_best(complete, config)
    baselines = meta.baselines or {}
    vs_baselines = (
        [
            _compare(best.config, f"baseline: {name}", correct[best.trial], bc, fields)
            for name, bc in base_correct.items()
        ]
        if best is not None and best.trial in correct
        else []
    )
    ensembles = meta.ensembles or []
    importances, importance_note = _importances(study, config, complete)
    majority = dict(next(iter((meta.baseline_predictions or {}).get("majority", {}).values()), {}).items())
    rep = Report(
        study=study.study_name,
        config=config,
        n_eval=len(ids),
        rows=rows,
        baselines=baselines,
        validation_baselines=meta.validation_baselines or {},
        comparisons=comparisons,
        best=best,
        best_vs_baselines=vs_baselines,
        front=front,
        ensembles=ensembles,
        reliability=reliability,
        early_signal=early_signal(complete, config),
        rungs=rung_decisions([r.record for r in rows], halving.get("promoted", {}), config, halving.get("decisions")),
        importances=importances,
        importance_note=importance_note,
        recommendation=[],
        generated=dt.datetime.now().isoformat(timespec="seconds"),
        majority_labels=majority,
    )
    rep.recommendation = _recommend(rep)
    return rep


def _row(r: TrialRecord, fields: list[str], config: Config) -> ReportRow:
    row = ReportRow(r.number or 0, r.label, r.state, r)
    if r.state != Status.COMPLETE or r.test is None:
        return row
    t = r.test
    row.accuracy = dict(t.accuracy)
    row.ci95 = (
        {f: t.ci95.get(f) or list(wilson_interval(round(t.accuracy[f] * t.n), t.n)) for f in fields} if t.n else {}
    )
    row.per_field = {m.name: dict(t.per_field.get(m.name, {})) for m in EXTRA}
    row.overall, row.exact_match = t.overall, t.exact_match
    row.objective = r.objective_value(config.study.objectives[0], config.eval.objective_split)
    tl, el = r.train_loss_per_epoch or [], r.eval_loss_per_epoch or []
    row.gap = (el[-1] - tl[-1]) if tl and el else None
    row.eval_loss_rising = bool(len(el) >= 2 and el[-1] > min(el[:-1]))
    row.single_label = t.single_label()
    return row


def _check_same_examples(rows: list[ReportRow]) -> None:
    if len({r.record.eval_ids_sha256 for r in rows if r.record.eval_ids_sha256}) > 1:
        raise UserError(
            "the study's trials were evaluated on different example sets; their accuracies are not "
            "comparable. Start a new study for the new evaluation set"
        )


def _correctness(store: Any, complete: list[ReportRow], ids: list[str], fields: list[str]):
    """Per trial, whether each test example is right (per field and all fields), the
    gold labels, and reliability-diagram bins per trial and field (label scoring)."""
    correct, gold, reliability = {}, None, {}
    for row in complete:
        preds = load_predictions(store, row.record)
        if preds is None or [i for i in ids if i in preds] != ids:
            continue
        correct[row.trial] = correctness(preds, ids, fields)
        gold = gold or {i: preds[i].gold for i in ids}
        if all(preds[i].probs is not None for i in ids):
            reliability[row.config] = {
                f: reliability_bins([preds[i].gold[f] for i in ids], [(preds[i].probs or {})[f] for i in ids])
                for f in fields
            }
    return correct, gold, reliability


def _baseline_correctness(
    baseline_preds: dict[str, Any], gold, ids: list[str], fields: list[str]
) -> dict[str, dict[str, list[bool]]]:
    out = {}
    for name, preds in baseline_preds.items():
        if gold is not None and all(i in preds for i in ids):
            out[name] = {f: [preds[i][f] == gold[i][f] for i in ids] for f in fields}
            out[name]["overall"] = [all(preds[i][f] == gold[i][f] for f in fields) for i in ids]
    return out


def _compare(
    name_a: str, name_b: str, a: dict[str, list[bool]], b: dict[str, list[bool]], fields: list[str]
) -> Comparison:
    tests = {}
    for f in fields + ["overall"]:
        m = mcnemar_exact(a[f], b[f])
        tests[f] = Test(m.only_a, m.only_b, m.p_value)
    return Comparison(name_a, name_b, tests)


def _holm_family(comparisons: list[Comparison], fields: list[str]) -> list[Comparison]:
    """Holm's correction per column over all pairwise comparisons of configurations: with
    k configurations there are k(k-1)/2 tests, and one of them is 'significant' by luck
    far more often than 5% of the time."""
    for f in fields + ["overall"]:
        adjusted = holm([c.tests[f].p for c in comparisons])
        for c, p in zip(comparisons, adjusted):
            c.tests[f].p_holm = p
    return comparisons


def _front(study: optuna.Study, complete: list[ReportRow]) -> list[ReportRow]:
    numbers = pareto_front(study)
    return [r for r in complete if r.trial in numbers]


def _choose_best(complete: list[ReportRow], config: Config) -> ReportRow | None:
    """The study's best trial (``core.best_record``, the rule every command uses: the
    objective on its split, the first label field on that split, the smaller train/eval
    gap, faster inference, the earlier trial)."""
    best = best_record(
        [r.record for r in complete], config.study.objectives[0], config.eval.objective_split, list(config.data.fields)
    )
    return next((r for r in complete if best is not None and r.trial == best.number), None)


def early_signal(complete: list[ReportRow], config: Config) -> list[EarlySignal]:
    """Per validation point: Spearman's rho between the accuracy (and the label
    log-probability) there and the final validation accuracy, over the finished
    configurations: the evidence that early points predict the end, or that they do not."""
    from scipy.stats import spearmanr

    finals = {r.trial: r.validation for r in complete if r.validation is not None and r.record.validation_curve}
    if len(finals) < MIN_FOR_RHO:
        return []
    by_point: dict[int, dict[str, list[tuple[float, float]]]] = {}
    fraction: dict[int, float] = {}
    for r in complete:
        if r.trial not in finals:
            continue
        for vp in r.record.validation_curve or []:
            fraction[vp["point"]] = float(vp.get("fraction") or 0.0)
            for metric in ("accuracy", "label_logprob"):
                if vp.get(metric) is not None:
                    by_point.setdefault(vp["point"], {}).setdefault(metric, []).append((vp[metric], finals[r.trial]))
    out = []
    for point in sorted(by_point):
        for metric, pairs in by_point[point].items():
            if len(pairs) < MIN_FOR_RHO or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
                continue
            res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
            out.append(
                EarlySignal(point, fraction.get(point), metric, float(res.statistic), float(res.pvalue), len(pairs))
            )
    return out


def rung_decisions(
    records: list[TrialRecord],
    promoted: dict[str, list[str]],
    config: Config,
    steps: dict[str, list[dict[str, Any]]] | None = None,
) -> list[RungDecision]:
    """Successive halving's decided rungs: per configuration that reached one, its score,
    whether it went on, and for the ones left out the paired evidence against the last
    one promoted on merit (a one-sided paired t-test on the rung's per-example scores);
    with adaptive promotion, each step's evidence and decision (``steps``, per rung)."""
    keys = config.searched_keys()
    by_key: dict[str, TrialRecord] = {}
    for r in records:
        if r.rung is not None and all(k in r.params for k in keys):
            by_key[point_key({k: r.params[k] for k in keys})] = r
    names = {k: _label(r) for k, r in by_key.items()}
    out = []
    for rung_s, went_on in sorted(promoted.items(), key=lambda kv: int(kv[0])):
        reached = [(k, r) for k, r in by_key.items() if (r.rung_values or {}).get(rung_s) is not None]
        reached.sort(key=lambda kr: -(kr[1].rung_values or {})[rung_s])
        cut = None  # the last promoted on merit: the best, without a gap
        for k, r in reached:
            if k not in went_on:
                break
            cut = r
        cut_examples = (cut.rung_examples or {}).get(rung_s) if cut else None
        entries = []
        for k, r in reached:
            mine = (r.rung_examples or {}).get(rung_s)
            p = paired_worse(cut_examples, mine) if cut_examples and mine and k not in went_on else None
            cooled = _cooled_at(r, int(rung_s), config)
            entries.append(
                RungEntry(_label(r), (r.rung_values or {})[rung_s], k in went_on, p, cooled[1] if cooled else None)
            )
        first = next((_cooled_at(r, int(rung_s), config) for _, r in reached), None)
        out.append(
            RungDecision(
                int(rung_s),
                config.study.rungs[int(rung_s)],
                config.study.prune_on,
                first[0] if first else None,
                entries,
                [evidence_line(int(rung_s), config.study.rungs, e, names) for e in (steps or {}).get(rung_s, [])],
            )
        )
    return out


def _cooled_at(record: TrialRecord, rung: int, config: Config) -> tuple[int, float | None] | None:
    """(cool-down steps, the metric measured before the branch) where it was cooled down
    at the rung; None where it was not."""
    if not record.max_steps:
        return None
    step = min(record.max_steps, max(1, round(config.study.rungs[rung] * record.max_steps)))
    cooled = next((c for c in record.cooldown_curve or [] if c["step"] == step), None)
    if cooled is None:
        return None
    stable = next((v.get(config.study.prune_on) for v in record.validation_curve or [] if v["step"] == step), None)
    return int(cooled["cooldown_steps"]), stable


def _label(record: TrialRecord) -> str:
    return short_point_key(record.params)


def _importances(study: optuna.Study, config: Config, complete: list[ReportRow]) -> tuple[dict[str, float] | None, str]:
    """fANOVA parameter importances (Optuna's) for the first objective, where they mean
    something: two or more searched hyperparameters that vary, four or more finished trials."""
    varied = [k for k in config.searched_keys() if len({str(r.record.params.get(k)) for r in complete}) > 1]
    if len(varied) < 2 or len(complete) < 4:
        return None, (
            f"parameter importances need at least 2 varied hyperparameters and 4 complete trials "
            f"(this study: {len(varied)} and {len(complete)})"
        )
    import optuna

    try:
        imp = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            params=varied,
            target=(lambda t: t.values[0]) if len(config.study.objectives) > 1 else None,
        )
    except (ValueError, RuntimeError) as e:
        return None, f"parameter importances could not be computed: {e}"
    return dict(imp), "fANOVA (Optuna), on the first objective"


def compare_with_baselines(
    study: optuna.Study, config: Config, store: Any, record: TrialRecord
) -> dict[str, Comparison]:
    """McNemar tests of one trial against each baseline on the study's test examples."""
    fields = list(config.data.fields)
    meta = StudyMeta.from_user_attrs(study.user_attrs)
    ids = [s["id"] for s in meta.eval_subset or []]
    preds = load_predictions(store, record)
    if preds is None or [i for i in ids if i in preds] != ids:
        return {}
    mine = correctness(preds, ids, fields)
    gold = {i: preds[i].gold for i in ids}
    return {
        name: _compare(record.label, f"baseline: {name}", mine, bc, fields)
        for name, bc in _baseline_correctness(meta.baseline_predictions or {}, gold, ids, fields).items()
    }


def _recommend(rep: Report) -> list[str]:
    best, fields = rep.best, rep.fields
    if best is None:
        return ["No configuration has a COMPLETE trial yet: nothing to recommend."]
    lines = []
    if rep.front:
        lines.append(
            "Pareto front (no trial is better on every objective): "
            + "; ".join(f"**{r.config}** ({', '.join(f'{v:.4g}' for v in r.record.values or [])})" for r in rep.front)
            + ". Choose along it by what matters more: the first objective (accuracy) or the costs after it."
        )
    on = f"{rep.split} " if rep.split == "validation" else ""
    lines.append(
        f"Best by the plan's criteria ({rep.objectives[0]} on {on or 'test '}examples, then {fields[0]}, then "
        "overfitting, "
        f"then speed): **{best.config}** with overall test accuracy {_pct(best.overall)} ({fields[0]} "
        f"{_pct(best.accuracy.get(fields[0]))}"
        + "".join(
            f", {m.title} {m.show(m.aggregate(list(values.values())))}"
            for m in SUMMARY_METRICS[1:]
            if (values := best.per_field.get(m.name))
        )
        + ")"
        + (f", validation {_pct(best.validation)}" if best.validation is not None else "")
        + "."
    )
    lines += _versus_others(rep)
    lines += _versus_baselines(rep)
    for f, label in best.single_label.items():
        lines.append(f"WARNING: {one_answer(f, label, rep.majority_labels.get(f) == label)}.")
    for e in rep.ensembles:
        better = e["overall"] > (best.overall or 0)
        lines.append(
            f"Ensemble of {', '.join(e['members'])} ({e['method']} voting): {_pct(e['overall'])} vs best single "
            f"{_pct(e['best_single_overall'])}, McNemar p = {e['p_vs_best']:.2g}"
            + ("" if e["p_vs_best"] < ALPHA else " (not significant)")
            + f". It costs {len(e['members'])} adapters to serve and {len(e['members'])} forward passes per example"
            + (
                "; worth it only if the gain holds on new data"
                if better
                else "; the single best trial is the better deal"
            )
            + f" (members chosen on {e['chosen_on']})."
        )
    if best.eval_loss_rising:
        lines.append("Its validation loss rose in the last epoch: a sign of overfitting; fewer epochs may do as well.")
    if best.record.adapter_dir:
        lines.append(
            f"Its adapter: `{best.record.adapter_dir}`; a standalone model folder: "
            f"`optuna-search export-model{study_flags(rep.config)} --trial {best.trial} --output DIR`."
        )
    return lines


def _versus_others(rep: Report) -> list[str]:
    best = rep.best
    assert best is not None
    if len(rep.complete) <= 1:
        return []
    # The family for "better than every other": the best against each other configuration.
    family = [c for c in rep.comparisons if best.config in (c.a, c.b)]
    ties = []
    for c, p_holm in zip(family, holm([c.tests["overall"].p for c in family])):
        if p_holm >= ALPHA or _worse(best, c):
            ties.append((c.b if c.a == best.config else c.a, c.tests["overall"].p, p_holm))
    if ties:
        return [
            "It is NOT significantly better than "
            + ", ".join(f"{o} (McNemar p = {p:.2f}, Holm-adjusted {ph:.2f})" for o, p, ph in ties)
            + " on these examples: the difference may be noise. Among configurations within noise of the best, "
            "the smallest rank is the cheapest to train and serve."
        ]
    return [
        f"It is significantly better than every other configuration (McNemar on all fields right, Holm-adjusted "
        f"p < {ALPHA} over the {len(family)} comparisons)."
    ]


def _worse(best: ReportRow, c: Comparison) -> bool:
    t = c.tests["overall"]
    mine, theirs = (t.only_a, t.only_b) if c.a == best.config else (t.only_b, t.only_a)
    return mine <= theirs


def _versus_baselines(rep: Report) -> list[str]:
    best, lines = rep.best, []
    assert best is not None
    for c in rep.best_vs_baselines:
        name = c.b.replace("baseline: ", "")
        acc = rep.baselines.get(name, {}).get("overall")
        t = c.tests["overall"]
        if best.overall is not None and acc is not None and best.overall <= acc:
            lines.append(f"WARNING: it does not beat the {name} baseline ({_pct(acc)} overall).")
        elif t.significant:
            lines.append(f"It beats the {name} baseline ({_pct(acc)} overall) significantly (p = {t.p:.3g}).")
        else:
            lines.append(
                f"It is above the {name} baseline ({_pct(acc)} overall) but NOT significantly (p = {t.p:.2f})."
            )
    for f in rep.fields:
        for c in rep.best_vs_baselines:
            if c.tests[f].significant and c.tests[f].only_b > c.tests[f].only_a:
                lines.append(f"On {f} it is significantly worse than {c.b}.")
    return lines


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render_html(rep: Report, markdown_text: str, study: optuna.Study | None = None) -> str:
    figs = build_figures(rep, study)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs)]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Study report: {html.escape(rep.study)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto} pre{white-space:pre-wrap}</style>"
        "</head><body>\n"
        f"<h1>Study report: {html.escape(rep.study)}</h1>\n"
        + "\n".join(f"<div class='chart'>{p}</div>" for p in parts)
        + f"\n<h2>Tables</h2>\n<pre>{html.escape(markdown_text)}</pre>\n</body></html>\n"
    )


def write_report(rep: Report, out_dir: str | Path, study: optuna.Study | None = None) -> tuple[Path, Path]:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--output '{out}' is a file; the report is a directory (report.md, report.html): give a directory path"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the report directory '{out}' ({e.strerror}); choose another --output") from None
    md = render_markdown(rep)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(render_html(rep, md, study), encoding="utf-8")
    return md_path, html_path


__all__ = ["Report", "ReportRow", "collect_report", "load_predictions", "render_markdown", "write_report"]
