"""`optuna-search status`: where a study stands, without importing torch."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import TYPE_CHECKING

from optuna_search.core import Config, redact_remote
from optuna_search.dashboards import StatusInput, render_status, status_report
from optuna_search.search.loop import EXIT_INCOMPLETE, EXIT_OK, Status, study_state, summary_points
from optuna_search.search.remote import local_study
from optuna_search.storage import (
    STATUS,
    SyncStatus,
    checkpoint_step,
    last_complete_checkpoint,
    pareto_front,
    point_checkpoints,
    study_flags,
)

if TYPE_CHECKING:
    import optuna


def status(study: optuna.Study, config: Config) -> tuple[str, int]:
    """The status table, and the exit code: 0 complete, 1 not (yet) complete."""
    state = study_state(study, config)
    front = None
    if len(config.study.objectives) > 1:
        best = pareto_front(study)
        front = [p.label for p in state.points if any(t.number in best for t in p.complete)]
    fields = list(config.data.fields)
    checkpoints = {p.key: _checkpoint_step(config, p.params) for p in state.points if not p.status.finished}
    report = status_report(
        summary_points(state, config),
        StatusInput(
            state.n_target,
            config.is_grid,
            config.eval.objective_split,
            config.study.objectives[0],
            fields,
            front,
            list(config.study.rungs) if config.halving else None,
            state.finished,
            state.pruned,
            checkpoints,
        ),
    )
    text = render_status(report, config.study.name, study_flags(config))
    failed = state.of(Status.FAILED)
    if failed:
        text += (
            "\nfailed: "
            + ", ".join(p.label for p in failed)
            + (
                " (re-run them with the `optuna-search run` command that ran the study, its --preset/--config/--set, "
                "plus --retry-failed)"
            )
        )
    remote = remote_line(config)
    if remote:
        text += "\n" + remote
    return text, EXIT_OK if state.done else EXIT_INCOMPLETE


def remote_line(config: Config, now: float | None = None) -> str | None:
    """The remote as this machine last saw it: its last complete upload from here and
    what is not there yet, when any machine last wrote it and its live size, a dataset
    repo's commits in the last hour against its budget, a lost lease (None: no remote)."""
    if not config.storage.remote:
        return None
    local = local_study(config)
    tag = hashlib.sha256(redact_remote(config.storage.remote).encode()).hexdigest()[:8]
    st = SyncStatus.load(local.state_file(f"{tag}.{STATUS}"))
    if st is None:
        return f"remote: {redact_remote(config.storage.remote)} (not reached from this machine yet)"
    now = time.time() if now is None else now
    parts = []
    if st.last_sync is not None:
        parts.append(f"last complete upload from here {_at(st.last_sync, now)}")
    if st.remote_written:
        written = dt.datetime.fromisoformat(st.remote_written).timestamp()
        parts.append(f"last written {_at(written, now)} by {st.remote_writer or 'another machine'}")
    if st.remote_bytes is not None:
        parts.append(f"{st.remote_bytes / 2**20:.1f} MiB live")
    if st.pending:
        parts.append(f"not yet there: {', '.join(st.pending)}")
    elif st.last_sync is not None:
        parts.append("nothing left to upload")
    if st.commit_budget:
        parts.append(
            f"{st.commits_last_hour(now)} commits from here in the last hour (this study's budget: "
            f"{st.commit_budget} an hour)"
        )
    if st.refused_until is not None and st.refused_until > now:
        parts.append(
            f"the remote refuses writes until {time.strftime('%H:%M:%S', time.localtime(st.refused_until))} "
            "(its Retry-After: e.g. the Hub's 128 commits an hour, other writers' commits counted)"
        )
    if st.last_error:
        parts.append(f"last error: {st.last_error}")
    if st.lease_lost:
        parts.append(f"LEASE LOST: {st.lease_lost}")
    return f"remote: {st.remote}: " + "; ".join(parts or ["nothing pushed yet"])


def _at(t: float, now: float) -> str:
    return f"{time.strftime('%H:%M:%S', time.localtime(t))} ({max(0.0, now - t) / 60:.0f} min ago)"


def _checkpoint_step(config: Config, params: dict) -> int | None:
    last, _ = last_complete_checkpoint(point_checkpoints(config.train.output_dir, config.study.name, params))
    return checkpoint_step(last) if last is not None else None
