"""Study summaries, notes and reports (tables as data, then rendered), optuna-dashboard
launch. Reads studies and trial records; never trains."""

from optuna_search.dashboards._report import (
    collect_report,
    render_markdown,
    write_report,
)
from optuna_search.dashboards._summary import SummaryRow, render_summary, summary_rows

__all__ = ["SummaryRow", "collect_report", "render_markdown", "render_summary", "summary_rows", "write_report"]
