"""Study summaries and reports (tables as data, then rendered), optuna-dashboard launch."""

from optuna_search.dashboards._summary import render_summary, summary_rows

__all__ = ["render_summary", "summary_rows"]
