"""The one front door of `run`: the command line and the Python API both build a
:class:`RunRequest` and hand it to :func:`execute`, which resolves the configuration once
(the layers read once, standard input included; the stored study's meaning of keys its
config predates; a bundle to resume from), checks it in one preflight pass, then runs
the study in this process or in `--workers` processes.

    layers -> RunRequest -> execute: resolve (bundle, stored study) -> preflight -> run -> summary
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from dataclasses import dataclass, fields
from typing import Any

from optuna_search.core import Config, UserError, build_config
from optuna_search.objectives import demo_note
from optuna_search.search.front._config import config_layers, explicit_of
from optuna_search.search.front._summary import Summary, summarize
from optuna_search.search.loop import (
    EXIT_BUDGET,
    EXIT_OK,
    EXIT_REMOTE,
    RunOutcome,
    WorkerOptions,
    choose_workers,
    run_study,
    run_with_workers,
)
from optuna_search.search.remote import RemoteSession, start_remote
from optuna_search.search.setup import as_resumed, preflight
from optuna_search.search.use import import_study_bundle
from optuna_search.storage import check_server_reachable

log = logging.getLogger("optuna_search")


@dataclass(frozen=True)
class RunRequest:
    """Everything `run` was asked to do."""

    config: Config
    explicit: frozenset[str] | None = None
    """The keys the user set (a config file, --set, flags), as opposed to a preset's or the
    defaults: what an earlier version's study may not read in its own old meaning. None
    (a Config built in code): the keys that differ from the defaults."""
    retry_failed: bool = False
    time_budget_s: float | None = None
    workers: int | None = None
    """Worker processes; None: one per visible GPU (1 on a CPU)."""
    oversubscribe: bool = False
    progress_interval: float = 10.0
    resume_from: str | None = None
    """A bundle written by `export` (a remote in a folder; or a bundle of an earlier
    version) to import first."""
    drop_damaged: bool = False
    """A remote whose only damage is in the newest checkpoint of unfinished points: drop
    it (said), those points train again from their start."""
    worker: int | None = None
    """Set in one of `run --workers N`'s processes: its number."""

    @classmethod
    def of(cls, config: Config, explicit: frozenset[str] | None = None, **options: Any) -> RunRequest:
        """The request with ``options`` named as the fields below (the command line's flags
        and the API's keywords both come through here: one name and one default each); an
        unknown option is one clear error naming the known ones."""
        unknown = sorted(set(options) - set(RUN_OPTIONS))
        if unknown:
            known = ", ".join(o for o in RUN_OPTIONS if o != "worker")  # `worker` is run --workers' own
            raise UserError(f"unknown run option(s) {', '.join(unknown)}; known: {known}")
        return cls(config, explicit, **_checked(options))

    @classmethod
    def from_layers(
        cls,
        preset: str | None = None,
        config_file: str | None = None,
        sets: list[str] | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        **options: Any,
    ) -> RunRequest:
        """The request from a preset, a TOML file ('-': standard input, read once), --set
        strings and flags, in that order of precedence."""
        layers = config_layers(preset, config_file, sets, overrides)
        return cls.of(build_config(layers.merged), frozenset(explicit_of(layers)), **options)


RUN_OPTIONS = tuple(f.name for f in fields(RunRequest) if f.name not in ("config", "explicit"))


def parse_duration(text: str) -> float:
    """'11h30m', '90m', '45s', '2h', '1.5h' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 11h30m, 90m or 600s")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    total = h * 3600 + mi * 60 + se
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive duration")
    return total


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    """The options as the command line would have taken them (a duration as text or a
    positive number of seconds, counts as positive integers), every problem in one error."""
    out, problems = dict(options), []
    budget = options.get("time_budget_s")
    if isinstance(budget, str):
        try:
            out["time_budget_s"] = parse_duration(budget)
        except argparse.ArgumentTypeError as e:
            problems.append(f"time_budget_s: {e}")
    elif budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0
    ):
        problems.append(f"time_budget_s = {budget!r} must be a positive number of seconds, or a duration like '11h30m'")
    workers = options.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        problems.append(f"workers = {workers!r} must be a positive integer (or None: one per GPU)")
    interval = options.get("progress_interval")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval)
    ):
        problems.append(f"progress_interval = {interval!r} must be a number of seconds")
    for flag in ("retry_failed", "oversubscribe", "drop_damaged"):
        if flag in options and not isinstance(options[flag], bool):
            problems.append(f"{flag} = {options[flag]!r} must be True or False")
    if problems:
        raise UserError("; ".join(problems))
    return out


"""What `run` takes besides the configuration: the command line's flags (``--time-budget``
is ``time_budget_s``) and the API's keywords, by the same names."""


@dataclass
class RunResult:
    outcome: RunOutcome | None
    """None when a worker refused the config (it said why)."""
    summary: Summary | None
    exit_code: int


def execute(request: RunRequest) -> RunResult:
    if request.progress_interval < 0:
        raise UserError(f"--progress-interval {request.progress_interval} must be >= 0 seconds")
    started = time.monotonic()
    config = request.config
    if request.resume_from:
        import_study_bundle(request.resume_from, config)
    if config.storage.remote:
        check_server_reachable(config.storage.url)  # a wrong password writes nothing to the remote
    remote = start_remote(config, worker=request.worker is not None, drop_damaged=request.drop_damaged)
    try:
        return _run(request, config, remote, started)
    except BaseException:
        if remote is not None:
            missing = remote.finish(min(30.0, config.storage.remote_timeout))  # what a stop leaves: pushed
            if remote.lost is not None:
                # The stop was ours: another run holds the remote now (said by the uploader).
                log.error("stopped: %s", remote.lost)
                return RunResult(None, None, EXIT_REMOTE)
            if missing:
                log.warning("remote %s lacks %s; the next run pushes it", remote.sync.remote.shown, ", ".join(missing))
        raise


def _deadline(request: RunRequest, config: Config, started: float, remote: RemoteSession | None) -> float | None:
    """When training must stop: the budget's end, less the time kept for the last uploads."""
    if not request.time_budget_s:
        return None
    keep = min(float(config.storage.remote_timeout), request.time_budget_s / 4) if remote is not None else 0.0
    return started + request.time_budget_s - keep


def _run(request: RunRequest, config: Config, remote: RemoteSession | None, started: float) -> RunResult:
    deadline = _deadline(request, config, started, remote)
    config = as_resumed(config, set(request.explicit) if request.explicit is not None else None)
    pf = preflight(config)
    if (note := demo_note(config)) is not None:
        log.info("%s", note)
    if request.worker is not None:
        # One of `run --workers N`'s processes: run until nothing is left for us (under
        # successive halving, until the last rung: the next rung's work follows the
        # others'); the parent prints the summary.
        outcome = run_study(
            config,
            pf,
            retry_failed=request.retry_failed,
            deadline=deadline,
            worker=str(request.worker),
            wait_for_others=config.halving,
            progress_interval=request.progress_interval,
            remote=remote,
        )
        code = EXIT_BUDGET if outcome.budget_reached else EXIT_OK
        return RunResult(outcome, None, _finish_remote(remote, request, started, code))
    n = choose_workers(request.workers, config.train.gpus_per_trial, oversubscribe=request.oversubscribe)
    if n > 1:
        handoff = tuple(remote.worker_env().items()) if remote is not None else ()
        options = WorkerOptions(request.retry_failed, request.time_budget_s, request.progress_interval, handoff)
        many = run_with_workers(config, pf, n, options)
        if many is None:
            raise UserError("a worker refused the config (its message is above)")
        outcome = many
    else:
        outcome = run_study(
            config,
            pf,
            retry_failed=request.retry_failed,
            deadline=deadline,
            progress_interval=request.progress_interval,
            remote=remote,
        )
    summary = summarize(outcome.study, config, outcome.state, ran=outcome.ran, budget_reached=outcome.budget_reached)
    return RunResult(outcome, summary, _finish_remote(remote, request, started, summary.exit_code, summary))


def _finish_remote(
    remote: RemoteSession | None, request: RunRequest, started: float, code: int, summary: Summary | None = None
) -> int:
    """The last uploads, waited for (until the budget's end, else storage.remote_timeout);
    exit 5 naming what the remote still lacks."""
    if remote is None:
        return code
    timeout = float(request.config.storage.remote_timeout)
    if request.time_budget_s:
        timeout = max(10.0, started + request.time_budget_s - time.monotonic())
    missing = remote.finish(timeout)
    if remote.lost is not None:
        line = f"{remote.lost}; nothing this run did since is in the remote"
        if summary is not None:
            summary.problems.append(line)
        else:
            log.error("%s", line)
        return EXIT_REMOTE
    if not missing:
        log.info("remote %s holds the whole study", remote.sync.remote.shown)
        return code
    line = (
        f"the remote {remote.sync.remote.shown} lacks {', '.join(missing)} (the upload did not finish in "
        f"{timeout:.0f} s); run the same command again to finish it (nothing is trained twice)"
    )
    if summary is not None:
        summary.problems.append(line)
    else:
        log.error("%s", line)
    return EXIT_REMOTE
