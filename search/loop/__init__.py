"""The study loop: what a study is made of and what runs next (``_schedule``,
``_halving``), the loop itself (``_scheduler``: the claim lock, the ledger), the runner
(``_runner``), samplers and search spaces, preflight, opening studies, workers, signals,
warm starts, `status` and the run's summary."""

from optuna_search.search.loop._scheduler import Job, Outcome, Runner, RunOutcome, Scheduler, TrialOutcome
from optuna_search.search.loop._space import distributions, make_sampler

__all__ = ["Job", "Outcome", "RunOutcome", "Runner", "Scheduler", "TrialOutcome", "distributions", "make_sampler"]
