"""The study loop: what a study is made of and what runs next (``_schedule``,
``_halving``), the loop itself (``_scheduler``: the claim lock, the ledger), the runner
(``_runner``), workers and signals, and a run from a checked config to a finished study
(``_run``, which keeps the study's note current). Setting a study up is ``search.setup``;
the remote side ``search.remote``; what `run` and `status` print, ``search.front``."""

from optuna_search.search.loop._exit import (
    EXIT_BUDGET,
    EXIT_DISK_FULL,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from optuna_search.search.loop._halving import Adaptive, next_action
from optuna_search.search.loop._halving import Config as HalvingConfig
from optuna_search.search.loop._run import rows_of, run_study, run_with_workers, summary_points, write_study_note
from optuna_search.search.loop._runner import DiskFull, ids_digest
from optuna_search.search.loop._schedule import Point, Promote, PruneRest, Status, StudyState, Train
from optuna_search.search.loop._scheduler import (
    Job,
    Outcome,
    Runner,
    RunOutcome,
    Scheduler,
    TrialOutcome,
    study_state,
)
from optuna_search.search.loop._signals import Terminated, handle_sigterm, request_stop
from optuna_search.search.loop._workers import WorkerOptions, choose_workers

__all__ = [
    "EXIT_BUDGET",
    "EXIT_DISK_FULL",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Adaptive",
    "DiskFull",
    "HalvingConfig",
    "Job",
    "Outcome",
    "Point",
    "Promote",
    "PruneRest",
    "RunOutcome",
    "Runner",
    "Scheduler",
    "Status",
    "StudyState",
    "Terminated",
    "Train",
    "TrialOutcome",
    "WorkerOptions",
    "choose_workers",
    "handle_sigterm",
    "ids_digest",
    "next_action",
    "request_stop",
    "rows_of",
    "run_study",
    "run_with_workers",
    "study_state",
    "summary_points",
    "write_study_note",
]
