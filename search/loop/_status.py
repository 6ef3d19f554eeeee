"""`optuna-search status`: where a study stands, without importing torch."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from optuna_search.core import Config
from optuna_search.dashboards import StatusInput, render_status, status_report
from optuna_search.search.loop._exit import EXIT_INCOMPLETE, EXIT_OK
from optuna_search.search.loop._remote import local_study
from optuna_search.search.loop._run import summary_points
from optuna_search.search.loop._schedule import Status
from optuna_search.search.loop._scheduler import study_state
from optuna_search.storage import (
    STATUS,
    SyncStatus,
    checkpoint_step,
    last_complete_checkpoint,
    point_checkpoints,
    redact_remote,
    study_flags,
)

if TYPE_CHECKING:
    import optuna


def status(study: optuna.Study, config: Config) -> tuple[str, int]:
    """The status table, and the exit code: 0 complete, 1 not (yet) complete."""
    state = study_state(study, config)
    front = None
    if len(config.study.objectives) > 1:
        best = {b.number for b in study.best_trials}
        front = [p.label for p in state.points if any(t.number in best for t in p.complete)]
    fields = list(config.data.fields)
    checkpoints = {p.key: _checkpoint_step(config, p.params) for p in state.points if not p.status.finished}
    report = status_report(
        summary_points(state, fields),
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
    """The remote's last complete upload and what it does not hold yet, as the last run
    on this machine left it (None: the study has no remote, or never pushed from here)."""
    if not config.storage.remote:
        return None
    local = local_study(config)
    tag = hashlib.sha256(redact_remote(config.storage.remote).encode()).hexdigest()[:8]
    st = SyncStatus.load(local.state_file(f"{tag}.{STATUS}"))
    if st is None:
        return f"remote: {redact_remote(config.storage.remote)} (nothing pushed from this machine yet)"
    now = time.time() if now is None else now
    when = (
        "never complete"
        if st.last_sync is None
        else (
            f"last complete upload {time.strftime('%H:%M:%S', time.localtime(st.last_sync))} "
            f"({(now - st.last_sync) / 60:.0f} min ago)"
        )
    )
    missing = f"; not yet there: {', '.join(st.pending)}" if st.pending else "; nothing left to upload"
    error = f"; last error: {st.last_error}" if st.last_error else ""
    return f"remote: {st.remote}: {when}{missing}{error}"


def _checkpoint_step(config: Config, params: dict) -> int | None:
    last, _ = last_complete_checkpoint(point_checkpoints(config.train.output_dir, config.study.name, params))
    return checkpoint_step(last) if last is not None else None
