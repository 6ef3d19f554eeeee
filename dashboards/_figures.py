"""The report's plotly charts: drawn from the report's data (``collect_report``), and
Optuna's own figures (``optuna.visualization``) wherever Optuna has one: optimization
history, intermediate values, timeline, parallel coordinates, contour and slice plots
(two or more searched hyperparameters), parameter importances, the Pareto front."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from optuna_search.dashboards._report_model import Report, ReportRow

log = logging.getLogger("optuna_search")


def build_figures(rep: Report, study: optuna.Study | None = None) -> list[Any]:
    complete = rep.complete
    figs = [_overall(rep, complete), _per_field(rep, complete), _loss_curves(complete), _gap(complete)]
    if rep.best is not None and rep.best.record.test is not None:
        figs += [_confusion(rep.best, f) for f in rep.fields if f in rep.best.record.test.confusion]
    if rep.reliability:
        figs += [_reliability(rep, f) for f in rep.fields]
    if study is not None:
        figs += optuna_figures(rep, study)
    return figs


def optuna_figures(rep: Report, study: optuna.Study) -> list[Any]:
    """Optuna's figures for what they show best (each is skipped, with a debug line, when
    the study has too little for it)."""
    import optuna.visualization as vis

    multi = len(rep.objectives) > 1
    target = (
        {"target": lambda t: t.values[0], "target_name": rep.objectives[0]}
        if multi
        else {"target_name": rep.objectives[0]}
    )
    keys = rep.config.searched_keys()
    plots: list[tuple[str, Any]] = [("timeline", lambda: vis.plot_timeline(study))]
    if not multi:
        plots += [
            ("optimization history", lambda: vis.plot_optimization_history(study, target_name=rep.objectives[0])),
            ("intermediate values", lambda: vis.plot_intermediate_values(study)),
        ]
    else:
        plots.append(("Pareto front", lambda: vis.plot_pareto_front(study, target_names=rep.objectives)))
    if len(rep.complete) >= 2:
        plots.append(("parallel coordinates", lambda: vis.plot_parallel_coordinate(study, params=keys, **target)))
        plots.append(("slice", lambda: vis.plot_slice(study, params=keys, **target)))
    if len(keys) >= 2 and len(rep.complete) >= 3:
        plots.append(("contour", lambda: vis.plot_contour(study, params=keys[:2], **target)))
    if rep.importances is not None:
        plots.append(("parameter importances", lambda: _importances(rep)))
    figs = []
    for name, make in plots:
        try:
            fig = make()
        except (ValueError, RuntimeError, KeyError) as e:
            log.debug("report: no %s figure (%s)", name, e)
            continue
        if fig.data:
            figs.append(fig)
    return figs


def _importances(rep: Report) -> Any:
    import plotly.graph_objects as go

    names = list(rep.importances or {})
    fig = go.Figure(go.Bar(x=[rep.importances[n] for n in names][::-1], y=names[::-1], orientation="h"))  # type: ignore[index]
    fig.update_layout(title=f"Hyperparameter importances ({rep.importance_note})", xaxis_title="importance")
    return fig


def _overall(rep: Report, complete: list[ReportRow]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=[r.config for r in complete], y=[r.overall for r in complete], name="overall (test)")
    for name, b in rep.baselines.items():
        fig.add_hline(y=b["overall"], line_dash="dash", annotation_text=f"{name} baseline")
    fig.update_layout(
        title="Overall test accuracy by configuration (dashed: baselines)", yaxis_tickformat=".0%", yaxis_range=[0, 1]
    )
    return fig


def _per_field(rep: Report, complete: list[ReportRow]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    names = [r.config for r in complete]
    for f in rep.fields:
        ys = [r.accuracy[f] for r in complete]
        hi = [r.ci95[f][1] - r.accuracy[f] for r in complete]
        lo = [r.accuracy[f] - r.ci95[f][0] for r in complete]
        fig.add_bar(x=names, y=ys, name=f, error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo})
    fig.update_layout(
        barmode="group",
        title="Test accuracy per field with Wilson 95% intervals",
        yaxis_tickformat=".0%",
        yaxis_range=[0, 1],
    )
    return fig


def _loss_curves(complete: list[ReportRow]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in complete:
        ep = list(range(1, len(r.train_losses) + 1))
        fig.add_scatter(x=ep, y=r.train_losses, mode="lines+markers", name=f"{r.config} train")
        fig.add_scatter(
            x=ep[: len(r.eval_losses)],
            y=r.eval_losses,
            mode="lines+markers",
            name=f"{r.config} eval",
            line={"dash": "dash"},
        )
    fig.update_layout(
        title="Loss per epoch (solid: train, dashed: validation)", xaxis_title="epoch", yaxis_title="loss"
    )
    return fig


def _gap(complete: list[ReportRow]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=[r.config for r in complete], y=[r.gap for r in complete])
    fig.update_layout(title="Overfitting signal: final eval loss - final train loss", yaxis_title="gap")
    return fig


def _confusion(best: ReportRow, field: str) -> Any:
    import plotly.graph_objects as go

    c = best.record.test.confusion[field]  # type: ignore[union-attr]
    labels, matrix = c["labels"], c["matrix"]
    fig = go.Figure(
        go.Heatmap(z=matrix, x=labels, y=labels[: len(matrix)], colorscale="Blues", text=matrix, texttemplate="%{text}")
    )
    fig.update_layout(
        title=f"Confusion matrix, {field}, best trial ({best.config}): rows gold, columns predicted",
        xaxis_title="predicted",
        yaxis_title="gold",
        yaxis_autorange="reversed",
    )
    return fig


def _reliability(rep: Report, field: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line={"dash": "dash", "color": "grey"}
    )
    for config, per_field in rep.reliability.items():
        bins = per_field.get(field, [])
        fig.add_scatter(
            x=[b["confidence"] for b in bins],
            y=[b["accuracy"] for b in bins],
            mode="lines+markers",
            name=config,
            text=[f"n={b['count']}" for b in bins],
        )
    fig.update_layout(
        title=f"Reliability diagram: {field} (top-label confidence vs accuracy, 10 bins)",
        xaxis_title="confidence",
        yaxis_title="accuracy",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1],
    )
    return fig
