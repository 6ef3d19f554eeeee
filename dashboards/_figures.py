"""The report's plotly charts, drawn from the report's data (``collect_report``)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def build_figures(rep: dict[str, Any]) -> list[Any]:
    complete = [r for r in rep["rows"] if r["state"] == "COMPLETE" and r.get("duplicate_of") is None and r.get("overall") is not None]
    figs = [_overall(rep, complete), _per_field(rep, complete), _loss_curves(complete), _gap(complete), _timeline(rep)]
    if rep["sampler"] != "grid" or any(r.get("pruned_at") for r in rep["rows"]):
        figs.append(_validation_curves(rep))
    if rep["front"]:
        figs.append(_pareto(rep, complete))
    for field in rep["fields"]:
        if rep["reliability"]:
            figs.append(_reliability(rep, field))
    return figs


def _overall(rep, complete):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=[r["config"] for r in complete], y=[r["overall"] for r in complete], name="overall (test)")
    for name, b in rep["baselines"].items():
        fig.add_hline(y=b["overall"], line_dash="dash", annotation_text=f"{name} baseline")
    fig.update_layout(title="Overall test accuracy by configuration (dashed: baselines)", yaxis_tickformat=".0%", yaxis_range=[0, 1])
    return fig


def _per_field(rep, complete):
    import plotly.graph_objects as go

    fig = go.Figure()
    names = [r["config"] for r in complete]
    for f in rep["fields"]:
        ys = [r[f] for r in complete]
        hi = [r[f + "_ci95"][1] - r[f] for r in complete]
        lo = [r[f] - r[f + "_ci95"][0] for r in complete]
        fig.add_bar(x=names, y=ys, name=f, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo))
    fig.update_layout(barmode="group", title="Test accuracy per field with Wilson 95% intervals", yaxis_tickformat=".0%", yaxis_range=[0, 1])
    return fig


def _loss_curves(complete):
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in complete:
        ep = list(range(1, len(r["train_loss_per_epoch"]) + 1))
        fig.add_scatter(x=ep, y=r["train_loss_per_epoch"], mode="lines+markers", name=f"{r['config']} train")
        fig.add_scatter(x=ep[: len(r["eval_loss_per_epoch"])], y=r["eval_loss_per_epoch"], mode="lines+markers",
                        name=f"{r['config']} eval", line=dict(dash="dash"))
    fig.update_layout(title="Loss per epoch (solid: train, dashed: validation)", xaxis_title="epoch", yaxis_title="loss")
    return fig


def _gap(complete):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=[r["config"] for r in complete], y=[r["gap"] for r in complete])
    fig.update_layout(title="Overfitting signal: final eval loss - final train loss", yaxis_title="gap")
    return fig


def _timeline(rep):
    import plotly.graph_objects as go

    fig = go.Figure()
    now = dt.datetime.now()
    colours = {"COMPLETE": "seagreen", "FAIL": "firebrick", "RUNNING": "orange", "WAITING": "grey", "PRUNED": "steelblue"}
    for r in [r for r in rep["rows"] if r["start"]]:
        start = dt.datetime.fromisoformat(r["start"])
        end = dt.datetime.fromisoformat(r["end"]) if r["end"] else now
        fig.add_bar(y=[f"#{r['trial']} {r['config']}"], x=[(end - start).total_seconds() * 1000], base=[start.isoformat()],
                    orientation="h", marker_color=colours.get(r["state"], "grey"), name=r["state"], showlegend=False)
    fig.update_layout(title="Trial timeline (green complete, blue pruned, red failed, orange running)", xaxis_type="date")
    return fig


def _validation_curves(rep):
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in rep["rows"]:
        curve = r.get("validation_curve") or []
        if curve:
            fig.add_scatter(x=[p[0] for p in curve], y=[p[1] for p in curve], mode="lines+markers",
                            name=f"#{r['trial']} {r['config']} ({r['state'].lower()})",
                            line=dict(dash="dot" if r["state"] == "PRUNED" else "solid"))
    fig.update_layout(title="Validation accuracy at each validation point (dotted: pruned)", xaxis_title="validation point",
                      yaxis_tickformat=".0%")
    return fig


def _pareto(rep, complete):
    import plotly.graph_objects as go

    objectives = rep["objectives"]
    on_front = {r["trial"] for r in rep["front"]}
    fig = go.Figure()
    for members, name, colour in ((False, "dominated", "lightgrey"), (True, "Pareto front", "crimson")):
        rows = [r for r in complete if (r["trial"] in on_front) == members and r.get("values")]
        fig.add_scatter(x=[r["values"][1] for r in rows], y=[r["values"][0] for r in rows], mode="markers+text",
                        text=[r["config"] for r in rows], textposition="top center", name=name, marker=dict(color=colour, size=10))
    fig.update_layout(title=f"{objectives[0]} against {objectives[1]} (front highlighted)", xaxis_title=objectives[1],
                      yaxis_title=objectives[0])
    return fig


def _reliability(rep, field):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line=dict(dash="dash", color="grey"))
    for config, per_field in rep["reliability"].items():
        bins = per_field.get(field, [])
        fig.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers", name=config,
                        text=[f"n={b['count']}" for b in bins])
    fig.update_layout(title=f"Reliability diagram: {field} (top-label confidence vs accuracy, 10 bins)",
                      xaxis_title="confidence", yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1])
    return fig
