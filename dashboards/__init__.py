"""Study summaries, notes and reports (tables as data, then rendered), optuna-dashboard
launch. Reads studies and trial records; never trains."""

from optuna_search.dashboards._launch import check_host, check_port, serve_dashboard
from optuna_search.dashboards._notes import evidence_line, field_head, field_rows, rung_line, study_note, trial_note
from optuna_search.dashboards._report import (
    Report,
    collect_report,
    compare_with_baselines,
    load_predictions,
    render_markdown,
    rung_decisions,
    write_report,
)
from optuna_search.dashboards._summary import (
    SUMMARY_METRICS,
    StatusInput,
    SummaryPoint,
    SummaryRow,
    best_row,
    pareto_rows,
    progress_line,
    render_status,
    render_summary,
    status_report,
    summary_rows,
    verdict,
)

__all__ = [
    "SUMMARY_METRICS",
    "Report",
    "StatusInput",
    "SummaryPoint",
    "SummaryRow",
    "best_row",
    "check_host",
    "check_port",
    "collect_report",
    "compare_with_baselines",
    "evidence_line",
    "field_head",
    "field_rows",
    "load_predictions",
    "pareto_rows",
    "progress_line",
    "render_markdown",
    "render_status",
    "render_summary",
    "rung_decisions",
    "rung_line",
    "serve_dashboard",
    "status_report",
    "study_note",
    "summary_rows",
    "trial_note",
    "verdict",
    "write_report",
]
