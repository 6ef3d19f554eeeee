"""The study report as Markdown (``report.md``, and the tables of ``report.html``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optuna_search.core import EXTRA, Status, markdown_table, num, one_answer, pct
from optuna_search.dashboards._summary import state_note
from optuna_search.objectives import ALPHA

if TYPE_CHECKING:
    from optuna_search.dashboards._report_model import Report


def render_markdown(rep: Report) -> str:
    md = _header(rep)
    for section in (
        _performance,
        _f1,
        _calibration,
        _losses,
        _overfitting,
        _speed,
        _search,
        _rungs,
        _early_signal,
        _importances,
        _pareto,
        _ensembles,
        _significance,
    ):
        md += section(rep)
    md += ["## Recommendation", ""] + [f"- {line}" for line in rep.recommendation] + [""]
    md += [f"_Generated {rep.generated} by optuna-search._", ""]
    return "\n".join(md)


def _header(rep: Report) -> list[str]:
    md = [f"# Study report: {rep.study}", ""]
    if rep.demo:
        md += [f"> {rep.demo}.", ""]
    c = rep.config
    method = "label scoring" if c.eval.method == "score" else "greedy decoding"
    md += [
        f"Base model: `{c.model.name_or_path}`. Sampler: {c.study.sampler}; schedule: {c.study.schedule}; "
        "objective(s): "
        f"{', '.join(rep.objectives)} on the **{rep.split}** split. Every configuration and baseline is scored on the "
        f"same {rep.n_eval} test examples ({method}). Intervals: Wilson 95%.",
        "",
    ]
    if rep.optimistic:
        md += [
            f"> The best of {len(rep.complete)} trials was chosen on these test examples: its test score is "
            "optimistic (the winner's luck on them is part of it). Choose on validation "
            '(eval.objective_split = "validation") for an unbiased test score.',
            "",
        ]
    return md


def _performance(rep: Report) -> list[str]:
    fields = rep.fields
    head = (
        ["Configuration"]
        + [f.capitalize() for f in fields]
        + ["Overall", "Validation", "Training loss", "Trainable params", "State"]
    )
    rows = []
    for r in rep.rows:
        if r.complete or (r.state == Status.COMPLETE and r.overall is not None):
            cells = [
                f"{pct(r.accuracy[f])} [{pct(r.ci95[f][0])}, {pct(r.ci95[f][1])}]"
                if f in r.ci95
                else pct(r.accuracy.get(f))
                for f in fields
            ]
            state = "complete" + (f" (= trial {r.record.duplicate_of})" if r.record.duplicate_of is not None else "")
            rows.append(
                [r.config]
                + cells
                + [
                    pct(r.overall),
                    pct(r.validation),
                    num(r.train_losses[-1] if r.train_losses else None, ".4f"),
                    num(r.record.trainable_params, ","),
                    state,
                ]
            )
        else:
            rec = r.record
            note = (
                state_note(_state(r.state), rec.pruned_at_step, rec.rung).replace(" at ", " at validation point ", 1)
                if rec.pruned_at_step
                else state_note(_state(r.state), None, rec.rung)
            )
            note += f": {rec.error[:80]}" if rec.error else ""
            rows.append([r.config] + ["-"] * len(fields) + ["-", pct(r.validation), "-", "-", note])
    for name, b in rep.baselines.items():
        vb = rep.validation_baselines.get(name, {})
        rows.append(
            [f"baseline: {name}"]
            + [pct(b.get(f)) for f in fields]
            + [pct(b.get("overall")), pct(vb.get("overall")), "-", "-", "-"]
        )
    return [
        "## Performance summary",
        "",
        "Test accuracy per field; Validation: overall accuracy on the validation subset.",
        "",
        markdown_table(head, rows),
        "",
    ]


def _f1(rep: Report) -> list[str]:
    """The metrics of the table besides accuracy (macro-F1, balanced accuracy, ...):
    accuracy rewards a model that answers the majority label; these do not."""
    fields = rep.fields
    titles = " / ".join(m.title for m in EXTRA)
    head = ["Configuration"] + [f"{f.capitalize()} {titles}" for f in fields] + [f"Mean {m.title}" for m in EXTRA]
    rows = []
    for r in rep.complete:
        rows.append(
            [r.config]
            + [" / ".join(m.show(r.per_field.get(m.name, {}).get(f)) for m in EXTRA) for f in fields]
            + [m.show(m.aggregate(list(v.values())) if (v := r.per_field.get(m.name)) else None) for m in EXTRA]
        )
    for name, b in rep.baselines.items():
        rows.append(
            [f"baseline: {name}"]
            + [" / ".join(m.show(m.in_baseline(b, f)) for m in EXTRA) for f in fields]
            + [m.show(m.in_baseline(b)) for m in EXTRA]
        )
    if not rep.complete:
        return []
    notes = [
        f"- **{r.config}: {one_answer(f, lab, rep.majority_labels.get(f) == lab)}**"
        for r in rep.complete
        for f, lab in r.single_label.items()
    ]
    return [
        "## " + _first_upper(_listed([m.title for m in EXTRA])),
        "",
        "Per field on the test examples (a model that always answers one label gets macro-F1 near 0 and balanced "
        "accuracy 1/labels, whatever its accuracy). Confusion matrices of the best trial: report.html.",
        "",
        markdown_table(head, rows),
        "",
    ] + (notes + [""] if notes else [])


def _calibration(rep: Report) -> list[str]:
    rows = [r for r in rep.complete if r.record.test and r.record.test.calibration]
    if not rows:
        return []
    fields = rep.fields
    head = ["Configuration"] + [f"{f.capitalize()} log-loss / Brier / ECE" for f in fields]
    body = [
        [r.config]
        + [
            " / ".join(
                num(r.record.test.calibration.get(f, {}).get(m), ".3f") if r.record.test else "-"
                for m in ("log_loss", "brier", "ece")
            )
            for f in fields
        ]
        for r in rows
    ]
    return [
        "## Calibration (label probabilities on the test examples)",
        "",
        "Lower is better for all three; ECE: expected calibration error of the top label over 10 confidence bins "
        "(reliability diagrams in report.html).",
        "",
        markdown_table(head, body),
        "",
    ]


def _losses(rep: Report) -> list[str]:
    complete = rep.complete
    n_ep = max((len(r.train_losses) for r in complete), default=0)
    body = [
        [r.config] + [num(v, ".4f") for v in r.train_losses] + ["-"] * (n_ep - len(r.train_losses)) for r in complete
    ]
    return [
        "## Training loss per epoch",
        "",
        markdown_table(["Configuration"] + [f"Epoch {i + 1}" for i in range(n_ep)], body),
        "",
    ]


def _overfitting(rep: Report) -> list[str]:
    body = [
        [
            r.config,
            num(r.train_losses[-1] if r.train_losses else None, ".4f"),
            num(r.eval_losses[-1] if r.eval_losses else None, ".4f"),
            num(r.gap, "+.4f"),
            "yes" if r.eval_loss_rising else "no",
        ]
        for r in rep.complete
    ]
    return [
        "## Overfitting analysis",
        "",
        markdown_table(
            [
                "Configuration",
                "Final train loss",
                "Final eval loss",
                "Gap (eval - train)",
                "Eval loss rose in last epoch",
            ],
            body,
        ),
        "",
    ]


def _speed(rep: Report) -> list[str]:
    body = [
        [
            r.config,
            num(r.record.eval_examples_per_second, ".2f"),
            str(r.record.test.parse_failures if r.record.test else "-"),
            num(r.record.minutes, ".1f"),
            num(r.record.peak_memory_mb, ",.0f"),
        ]
        for r in rep.complete
    ]
    return [
        "## Inference speed",
        "",
        markdown_table(
            ["Configuration", "Eval examples/s", "Parse failures", "Minutes (train + eval)", "Peak memory MB"], body
        ),
        "",
    ]


def _search(rep: Report) -> list[str]:
    c = rep.config
    if c.is_grid and c.study.schedule == "trials" and not any(r.record.pruned_at_step for r in rep.rows):
        return []
    rows = rep.rows
    pruned = [r for r in rows if r.state == Status.PRUNED]
    steps = sum(r.record.optimizer_steps or 0 for r in rows)
    full = sum(
        r.record.max_steps or r.record.optimizer_steps or 0 for r in rows if r.state in (Status.COMPLETE, Status.PRUNED)
    )
    md = [
        "## Search",
        "",
        f"{len(rows)} trials: {len(rep.complete)} complete, {len(pruned)} pruned "
        f"({sum(r.record.optimizer_steps or 0 for r in pruned)} of {steps} optimizer steps went to trials that "
        "were pruned), "
        f"{sum(r.state == Status.FAILED for r in rows)} failed or interrupted.",
    ]
    if c.study.schedule == "successive_halving" and full:
        md[-1] += (
            f" Successive halving (rungs {', '.join(f'{x:g}' for x in c.study.rungs)}, eta {c.study.eta}): "
            f"{steps} optimizer steps, {100 * steps / full:.0f}% of training every configuration to its end."
        )
    return md + [""]


def _rungs(rep: Report) -> list[str]:
    """Successive halving's decisions: per decided rung, every configuration's score, what
    went on, and the paired evidence against the last one promoted."""
    md: list[str] = []
    for d in rep.rungs:
        cooled = d.cooldown_steps is not None
        md += [
            f"## Rung {d.rung + 1} ({100 * d.fraction:.0f}% of training): what went on and why",
            "",
            f"Ranked by {d.metric}"
            + (
                f" after a cool-down branch ({d.cooldown_steps} steps, the learning rate falling to 0; discarded)"
                if cooled
                else ""
            )
            + (
                "; promoted in steps, each judged by what the ones that went on did at the next rung (below)"
                if d.steps
                else f"; the best 1/{rep.config.study.eta} went on"
            )
            + ". p: one-sided paired t-test that a configuration left "
            "out is worse than the last one promoted on merit, on the same validation examples (below "
            f"{ALPHA:g}: the evidence supports the cut).",
            "",
            markdown_table(
                ["Configuration", d.metric, *(["before the cool-down"] if cooled else []), "Went on", "p"],
                [
                    [
                        e.config,
                        num(e.score, ".4f"),
                        *([num(e.stable, ".4f")] if cooled else []),
                        "yes" if e.promoted else "no",
                        "-" if e.p_worse is None else f"{e.p_worse:.3g}",
                    ]
                    for e in d.entries
                ],
            ),
            "",
        ]
        if d.unsupported:
            names = ", ".join(e.config for e in d.unsupported)
            md += [
                f"{len(d.unsupported)} left out without the evidence for it ({names}): the validation examples do "
                "not tell them from the cut; more validation examples (eval.validation_samples) or a later rung "
                "would.",
                "",
            ]
        if d.steps:
            md += ["What the study learned at this rung, step by step:", "", *(f"- {line}" for line in d.steps), ""]
    return md


def _early_signal(rep: Report) -> list[str]:
    if not rep.early_signal:
        return []
    body = [
        [
            str(e.point),
            f"{100 * e.fraction:.0f}%" if e.fraction is not None else "-",
            e.metric,
            f"{e.rho:+.2f}",
            f"{e.p:.3g}",
            str(e.n),
        ]
        for e in rep.early_signal
    ]
    return [
        "## Do early validation points predict the end?",
        "",
        "Spearman's rho between the metric at each validation point and the final validation accuracy, over the "
        "finished configurations (near +1: the early ranking holds; near 0: pruning there cuts on noise).",
        "",
        markdown_table(["Validation point", "Training", "Metric", "rho", "p", "Configurations"], body),
        "",
    ]


def _importances(rep: Report) -> list[str]:
    if rep.importances is None:
        return (
            ["## Parameter importances", "", rep.importance_note + ".", ""]
            if not rep.config.is_grid or len(rep.config.searched_keys()) > 1
            else []
        )
    body = [[k, f"{v:.3f}"] for k, v in rep.importances.items()]
    return [
        "## Parameter importances",
        "",
        f"{rep.importance_note}.",
        "",
        markdown_table(["Hyperparameter", "Importance"], body),
        "",
    ]


def _pareto(rep: Report) -> list[str]:
    if not rep.front:
        return []
    head = ["Configuration"] + rep.objectives
    body = [[r.config] + [num(v, ".4g") for v in r.record.values or []] for r in rep.front]
    return [
        "## Pareto front",
        "",
        f"Trials no other trial beats on every objective ({len(rep.front)} of {len(rep.complete)}).",
        "",
        markdown_table(head, body),
        "",
    ]


def _ensembles(rep: Report) -> list[str]:
    if not rep.ensembles:
        return []
    fields = rep.fields
    head = (
        ["Ensemble", "Voting"]
        + [f.capitalize() for f in fields]
        + ["Overall", "Best single", "p vs best", "Members chosen on"]
    )
    body = [
        [", ".join(e["members"]), e["method"]]
        + [pct(e["accuracy"].get(f)) for f in fields]
        + [pct(e["overall"]), pct(e["best_single_overall"]), f"{e['p_vs_best']:.3g}", e["chosen_on"]]
        for e in rep.ensembles
    ]
    return [
        "## Ensembles",
        "",
        "From the members' stored predictions on the same test examples; p: exact McNemar, all fields right.",
        "",
        markdown_table(head, body),
        "",
    ]


def _significance(rep: Report) -> list[str]:
    fields = rep.fields
    md = ["## Significance (exact McNemar, paired on the same examples)", ""]
    tests = rep.comparisons + rep.best_vs_baselines
    if not tests:
        return md + ["Fewer than two complete configurations with saved predictions: nothing to test yet.", ""]
    head = ["A", "B"] + [f.capitalize() for f in fields] + ["All fields right"]

    def cell(t) -> str:
        holm = f", Holm {t.p_holm:.3g}" if t.p_holm is not None else ""
        return f"{t.only_a} vs {t.only_b}, p={t.p:.3g}{holm}{' *' if t.significant else ''}"

    body = [[c.a, c.b] + [cell(c.tests[k]) for k in fields + ["overall"]] for c in tests]
    return md + [
        "Cells: examples only A got right vs only B got right, p-value; between configurations also Holm's "
        f"adjustment over the {len(rep.comparisons)} pairwise comparisons (* = significant at 5% after it).",
        "",
        markdown_table(head, body),
        "",
    ]


def _state(state: Status | None) -> str:
    """A trial's state as the report writes it ("fail" for Optuna's FAIL, as it always did)."""
    return "fail" if state == Status.FAILED else state.value if state is not None else ""


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]
