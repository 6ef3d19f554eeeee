"""The study loop: what a study is made of and what runs next (``_schedule``,
``_halving``), the loop itself (``_scheduler``: the claim lock, the ledger), the runner
(``_runner``), samplers and search spaces, preflight, opening studies, workers, signals,
warm starts, `status` and the run's summary."""

from typing import Any

from optuna_search.search.loop._exit import (
    EXIT_BUDGET,
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from optuna_search.search.loop._halving import Config as HalvingConfig
from optuna_search.search.loop._halving import next_action
from optuna_search.search.loop._open import as_resumed, open_for_reading
from optuna_search.search.loop._preflight import preflight
from optuna_search.search.loop._remote import (
    RemoteSession,
    export_to,
    import_remote,
    reading_location,
    start_remote,
    write_through,
)
from optuna_search.search.loop._run import (
    Summary,
    print_summary,
    rows_of,
    run_study,
    run_with_workers,
    summarize,
    verdict,
    write_study_note,
)
from optuna_search.search.loop._runner import DiskFull, ids_digest
from optuna_search.search.loop._schedule import Promote, PruneRest, Status, Train
from optuna_search.search.loop._scheduler import (
    Job,
    Outcome,
    Runner,
    RunOutcome,
    Scheduler,
    TrialOutcome,
    study_state,
)
from optuna_search.search.loop._signals import Terminated, handle_sigterm
from optuna_search.search.loop._space import distributions, make_sampler
from optuna_search.search.loop._status import status
from optuna_search.search.loop._workers import WorkerOptions, choose_workers

__all__ = [
    "EXIT_BUDGET",
    "EXIT_DISK_FULL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "DiskFull",
    "HalvingConfig",
    "Job",
    "NoRepeatSampler",
    "Outcome",
    "Promote",
    "PruneRest",
    "RemoteSession",
    "RunOutcome",
    "Runner",
    "Scheduler",
    "Status",
    "Summary",
    "Terminated",
    "Train",
    "TrialOutcome",
    "WorkerOptions",
    "as_resumed",
    "choose_workers",
    "distributions",
    "export_to",
    "handle_sigterm",
    "ids_digest",
    "import_remote",
    "make_sampler",
    "next_action",
    "open_for_reading",
    "preflight",
    "print_summary",
    "reading_location",
    "rows_of",
    "run_study",
    "run_with_workers",
    "start_remote",
    "status",
    "study_state",
    "summarize",
    "verdict",
    "write_study_note",
    "write_through",
]


def __getattr__(name: str) -> Any:
    # NoRepeatSampler is an Optuna sampler: imported on first use, so that `--help` and the
    # modules that only schedule stay free of Optuna's import.
    if name == "NoRepeatSampler":
        from optuna_search.search.loop._samplers import NoRepeatSampler

        return NoRepeatSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
