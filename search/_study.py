"""Study orchestration: preflight, create/load, run every missing grid point once.

The rule this module enforces: a study is done when every grid point has a COMPLETE
trial. A point is run only when it has no COMPLETE trial and nothing else is about to
run it (a RUNNING trial with a live heartbeat, or a WAITING retry). Points are run in
grid order, each through one trial created for exactly that point, so two runs of the same command
never evaluate the same point twice; GridSampler still owns the search space, so the
study is an ordinary Optuna grid study for every Optuna tool.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna_search.search._config import Config, diff_semantic, grid_value_for_optuna, to_toml
from optuna_search.search._errors import UserError

log = logging.getLogger("optuna_search")

OBJECTIVE_NAME = "overall_accuracy"
ATTR_CONFIG = "config"
ATTR_EVAL_SUBSET = "eval_subset"
ATTR_BASELINES = "baselines"
ATTR_BASELINE_PREDICTIONS = "baseline_predictions"


class TrialError(Exception):
    """Raised out of the objective after the error is recorded on the trial."""


@dataclass
class Preflight:
    """Everything checked before a study is touched."""

    config: Config
    data: Any
    eval_subset: list[dict[str, str]]
    eval_examples: list[Any]
    baselines: dict[str, dict[str, float]]
    baseline_predictions: dict[str, dict[str, dict[str, str]]]
    quality: dict[str, Any]


def preflight(config: Config) -> Preflight:
    """Validate data, labels, model and storage URL. Writes nothing anywhere except the
    demo's cache (for ``builtin:`` sources)."""
    from optuna_search.objectives._baselines import compute_baselines
    from optuna_search.objectives._data import load_dataset_from_config, resolve_eval_subset, select_eval_subset
    from optuna_search.objectives._quality import check_quality
    from optuna_search.objectives._qlora import check_model_available
    from optuna_search.storage._storages import check_storage_url

    check_storage_url(config.storage.url)
    data = load_dataset_from_config(config.data)
    subset = select_eval_subset(data.test, config.eval.num_samples, config.eval.seed)
    examples = resolve_eval_subset(data.test, subset)
    check_model_available(config.model)
    baselines = compute_baselines(data.train.examples, examples, data.fields)
    return Preflight(config, data, subset, examples, baselines["accuracy"], baselines["predictions"], check_quality(data))


def search_space(config: Config) -> dict[str, list[Any]]:
    return {k: [grid_value_for_optuna(k, v) for v in vals] for k, vals in config.study.grid.items()}


def point_key(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={point[k]}" for k in sorted(point))


def point_dirname(point: dict[str, Any]) -> str:
    """A filesystem-safe folder per grid point: checkpoints are found by the point, not
    by the trial number, so a retried trial resumes where the last attempt stopped."""
    safe = point_key(point).replace(",", "__").replace("=", "-")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in safe)


def open_study(config: Config, pf: Preflight | None, *, create: bool):
    """Load the study (refusing a config that changes what its trials mean), or create it
    when ``create`` and it does not exist."""
    import optuna

    from optuna_search.storage._storages import make_storage, redact_url

    storage = make_storage(
        config.storage.url,
        heartbeat_interval=config.storage.heartbeat_interval,
        grace_period=config.storage.grace_period,
        read_only=not create,
    )
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    from optuna_search.search._sampler import GridPointSampler

    sampler = GridPointSampler(search_space(config), seed=config.train.seed)
    if config.study.name in names:
        study = optuna.load_study(study_name=config.study.name, storage=storage, sampler=sampler)
        stored = study.user_attrs.get(ATTR_CONFIG)
        if not create and stored is not None:
            # Reading a study (status, report, dashboard, export): its own config says
            # what its grid is; only where it lives comes from the command line.
            from optuna_search.search._config import load_config

            study.sampler = GridPointSampler(search_space(study_config(study, config)), seed=config.train.seed)
            return study
        if stored is not None:
            diffs = diff_semantic(stored, config.to_dict())
            if diffs:
                raise UserError(
                    f"study {config.study.name!r} in {redact_url(config.storage.url)} was created with a "
                    "config that gives its trials a different meaning; resume it with the original "
                    "config, or start a new study with --study-name. Differences:",
                    diffs,
                )
        if pf is not None:
            stored_subset = study.user_attrs.get(ATTR_EVAL_SUBSET)
            if stored_subset is not None and stored_subset != pf.eval_subset:
                raise UserError(
                    f"the evaluation subset of study {config.study.name!r} differs from the one the test "
                    "file gives now; restore the original test file or start a new study (--study-name)"
                )
        return study
    if not create:
        raise UserError(
            f"no study {config.study.name!r} in {redact_url(config.storage.url)}; "
            f"studies there: {', '.join(names) or 'none'} (pass --study-name)"
        )
    assert pf is not None
    study = optuna.create_study(
        study_name=config.study.name, storage=storage, sampler=sampler, direction="maximize"
    )
    study.set_metric_names([OBJECTIVE_NAME])
    # The stored copy is shown in the dashboard and reports: never a database password.
    shown = dataclasses.replace(config, storage=dataclasses.replace(config.storage, url=redact_url(config.storage.url)))
    study.set_user_attr(ATTR_CONFIG, shown.to_dict())
    study.set_user_attr("config_toml", to_toml(shown))
    study.set_user_attr(ATTR_EVAL_SUBSET, pf.eval_subset)
    study.set_user_attr(ATTR_BASELINES, pf.baselines)
    study.set_user_attr(ATTR_BASELINE_PREDICTIONS, pf.baseline_predictions)
    study.set_user_attr("grid_size", len(config.grid_points()))
    return study


def study_config(study, config: Config) -> Config:
    """The config a study was created with (its grid, data, model), located where
    ``config`` says (storage URL, study name): what read-only commands work from."""
    from optuna_search.search._config import load_config

    stored = study.user_attrs.get(ATTR_CONFIG)
    if stored is None:
        return config
    merged = {**stored, "storage": dataclasses.asdict(config.storage), "study": {**stored["study"], "name": config.study.name}}
    return load_config(overrides=merged)


def _trial_point(trial, keys: list[str], sampler=None) -> dict[str, Any] | None:
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    if not params and sampler is not None and "grid_id" in trial.system_attrs:
        # Claimed by a worker whose objective has not suggested its params yet.
        if trial.system_attrs.get("search_space") == sampler._search_space:
            params = sampler.point_of(trial.system_attrs["grid_id"])
    if not all(k in params for k in keys):
        return None
    return {k: params[k] for k in keys}


def grid_state(study, config: Config, trials: list | None = None) -> list[dict[str, Any]]:
    """Per grid point: its trials and what to do with it (``trials``: the study's trials
    if the caller has just read them)."""
    from optuna.trial import TrialState

    keys = list(config.study.grid)
    points = [{k: grid_value_for_optuna(k, v) for k, v in p.items()} for p in config.grid_points()]
    by_key: dict[str, list] = {point_key(p): [] for p in points}
    sampler = study.sampler if hasattr(study.sampler, "point_of") else None
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        p = _trial_point(t, keys, sampler)
        if p is not None and point_key(p) in by_key:
            by_key[point_key(p)].append(t)
    rows = []
    for p in points:
        trials = by_key[point_key(p)]
        states = [t.state for t in trials]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        failed_with_error = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
        if complete:
            status = "complete"
        elif TrialState.RUNNING in states:
            status = "running"
        elif TrialState.WAITING in states:
            status = "waiting"
        elif failed_with_error and trials[-1].state == TrialState.FAIL and "error" in trials[-1].user_attrs:
            status = "failed"
        else:
            status = "pending"
        rows.append({"point": p, "key": point_key(p), "status": status, "trials": trials, "complete": complete})
    return rows


@dataclass
class RunOutcome:
    study: Any
    state: list[dict[str, Any]]
    ran: int
    budget_reached: bool = False


def estimate_trial_seconds(state: list[dict[str, Any]]) -> float | None:
    """Mean wall time of the COMPLETE trials so far (None before the first)."""
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for r in state
        for t in r["complete"]
        if t.datetime_start and t.datetime_complete
    ]
    return sum(durations) / len(durations) if durations else None


def run_study(
    config: Config, *, retry_failed: bool = False, time_budget_s: float | None = None, wait_for_others: bool = True
) -> RunOutcome:
    """Run every grid point that lacks a COMPLETE trial, resuming interrupted ones from
    their checkpoints. With ``time_budget_s``, start no trial that the estimate from
    earlier trials says cannot finish, and stop a running one at a checkpoint in time."""
    from optuna.storages import fail_stale_trials

    started = time.monotonic()
    deadline = started + time_budget_s if time_budget_s else None
    pf = preflight(config)
    log.info(
        "data ok: %d train / %d validation / %d test examples; evaluation subset: %d examples (seed %d)",
        len(pf.data.train.examples), len(pf.data.validation.examples), len(pf.data.test.examples),
        len(pf.eval_examples), config.eval.seed,
    )
    study = open_study(config, pf, create=True)
    # Reconcile at once: trials whose process died are failed (and, by the storage's
    # retry callback, re-queued as WAITING) before we decide what is left to do, so the
    # retry of an interrupted trial is the first thing a new session does.
    fail_stale_trials(study)
    objective = _Objective(config, pf, study, deadline)
    return run_grid(
        study, config, objective, retry_failed=retry_failed, deadline=deadline,
        after_trial=lambda st, state: write_study_note(st, config, state), wait_for_others=wait_for_others,
    )


def write_study_note(study, config: Config, state: list[dict[str, Any]]) -> None:
    """The study's note in optuna-dashboard: the summary table with the baselines."""
    import optuna_dashboard

    from optuna_search.dashboards._notes import study_note
    from optuna_search.dashboards._summary import summary_rows

    fields = list(config.data.fields)
    body = study_note(
        config.study.name, summary_rows(study, state, fields), fields,
        study.user_attrs.get(ATTR_BASELINES), len(study.user_attrs.get(ATTR_EVAL_SUBSET) or []),
    )
    optuna_dashboard.save_note(study, body)


def run_grid(
    study,
    config: Config,
    objective,
    *,
    retry_failed: bool = False,
    deadline: float | None = None,
    after_trial=None,
    wait_for_others: bool = True,
) -> RunOutcome:
    """The scheduling loop: pick the next grid point without a COMPLETE trial, run it
    through one trial created for it (GridPointSampler), repeat. ``objective`` is called
    by ``study.optimize`` and carries ``position``, ``attempts`` and ``budget_stopped``.

    Safe with several workers on one study: choosing a point and creating its trial
    happen under a study-wide claim lock (storage/_claim.py), so no point is ever run by
    two workers at once. With ``wait_for_others``, points RUNNING elsewhere are waited
    for (and reclaimed if their worker dies) before returning."""
    from optuna_search.storage._claim import ClaimLock

    backend = getattr(study._storage, "_backend", study._storage)
    lock = ClaimLock(backend, study.study_name)
    study.sampler.on_claimed = lock.release
    ran = 0
    pruned: set[str] = set()
    try:
        while True:
            lock.acquire()
            trials = study.get_trials(deepcopy=False)
            if fail_orphaned_trials(study, config.storage.grace_period, trials):
                trials = study.get_trials(deepcopy=False)
            state = grid_state(study, config, trials)
            _prune_checkpoints(config, state, pruned)
            if getattr(objective, "budget_stopped", False):
                return RunOutcome(study, state, ran, budget_reached=True)
            todo = [r for r in state if r["status"] in ("pending", "waiting") or (retry_failed and r["status"] == "failed")]
            # Queued retries first: they hold the checkpoints of interrupted work.
            todo.sort(key=lambda r: r["status"] != "waiting")
            if not todo:
                lock.release()
                running = [r for r in state if r["status"] == "running"]
                if running and wait_for_others and _wait_for_running(study, config):
                    continue
                return RunOutcome(study, state, ran)
            if deadline is not None:
                estimate = estimate_trial_seconds(state)
                left = deadline - time.monotonic()
                if left <= 0 or (estimate is not None and estimate > left and not _has_checkpoint(config, todo[0]["point"])):
                    log.info(
                        "time budget: %s left, a trial takes about %s; not starting %s",
                        _fmt_s(left), _fmt_s(estimate), todo[0]["key"],
                    )
                    return RunOutcome(study, state, ran, budget_reached=True)
            row = todo[0]
            # A WAITING retry is popped by optimize() and keeps its point; otherwise the
            # sampler creates the trial for exactly this point. Either way the sampler
            # releases the claim lock once the trial carries its grid_id.
            study.sampler.next_point = row["point"]
            objective.position = (sum(r["status"] == "complete" for r in state) + 1, len(state))
            objective.attempts = len(row["trials"]) + (0 if row["status"] == "waiting" else 1)
            study.optimize(objective, n_trials=1, catch=(TrialError, _BudgetStop), gc_after_trial=False)
            lock.release()
            ran += 1
            if after_trial is not None:
                after_trial(study, grid_state(study, config))
    finally:
        lock.release()
        study.sampler.on_claimed = None


def fail_orphaned_trials(study, grace_period: float, trials: list | None = None) -> int:
    """Fail RUNNING trials that never got a heartbeat, older than the grace period.

    Optuna's stale-trial check only looks at trials with a heartbeat record. A process
    killed between creating its trial and starting the heartbeat thread leaves a trial
    that check never sees: RUNNING forever, and (if it had claimed a point) a grid point
    that would never be reclaimed. Returns how many were failed."""
    import datetime as dt

    from optuna.trial import TrialState
    from sqlalchemy import text

    backend = getattr(study._storage, "_backend", study._storage)
    if getattr(backend, "heartbeat_interval", None) is None:
        return 0
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return 0
    with backend.engine.connect() as conn:
        beating = {
            row[0]
            for row in conn.execute(
                text(
                    "SELECT t.trial_id FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                    "WHERE t.study_id = :sid AND t.state = 'RUNNING'"
                ),
                {"sid": study._study_id},
            )
        }
    now, failed = dt.datetime.now(), 0
    for t in running:
        if t._trial_id in beating or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() > grace_period:
            study._storage.set_trial_user_attr(t._trial_id, "orphaned", "its process died before its heartbeat started")
            if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                failed += 1
    return failed


def _fmt_s(s: float | None) -> str:
    from optuna_search.objectives._qlora import format_seconds

    return "unknown" if s is None else format_seconds(max(0.0, s))


def checkpoint_dir(config: Config, point: dict[str, Any]) -> Path:
    return Path(config.train.output_dir) / config.study.name / point_dirname(point)


def _has_checkpoint(config: Config, point: dict[str, Any]) -> bool:
    # A point with a checkpoint can always make progress: start it even when a whole
    # trial would not fit, since it stops at a checkpoint before the deadline anyway.
    return any(checkpoint_dir(config, point).glob("checkpoint-*"))


def _prune_checkpoints(config: Config, state: list[dict[str, Any]], done: set[str]) -> None:
    """Once a point is COMPLETE (in the database, not before) its intermediate
    checkpoints are dead weight; its final adapter stays."""
    from optuna_search.objectives._qlora import remove_intermediate_checkpoints

    for r in state:
        if r["status"] == "complete" and r["key"] not in done:
            remove_intermediate_checkpoints(checkpoint_dir(config, r["point"]))
            done.add(r["key"])


def _wait_for_running(study, config: Config) -> bool:
    """Other processes hold the remaining points: wait until they finish, or until their
    heartbeat goes stale and the point comes back to us. True when there is news."""
    from optuna.storages import fail_stale_trials

    running = [r["key"] for r in grid_state(study, config) if r["status"] == "running"]
    log.info("waiting for %s, RUNNING in another process (a dead one is detected after %ds)",
             ", ".join(running), config.storage.grace_period)
    while True:
        time.sleep(min(5, config.storage.heartbeat_interval))
        fail_stale_trials(study)
        fail_orphaned_trials(study, config.storage.grace_period)
        now = [r["key"] for r in grid_state(study, config) if r["status"] == "running"]
        if now != running:
            return True


class _BudgetStop(Exception):
    """The trial stopped at a checkpoint for the time budget; it is resumed next session."""


class _Objective:
    def __init__(self, config: Config, pf: Preflight, study, deadline: float | None = None) -> None:
        self.config = config
        self.pf = pf
        self.study = study
        self.deadline = deadline
        self.position = (1, 1)
        self.attempts = 1
        self.budget_stopped = False

    def __call__(self, trial) -> float:
        from optuna_search.objectives._data import resolve_eval_subset
        from optuna_search.objectives._qlora import (
            BudgetExhausted,
            OutOfMemory,
            environment_fingerprint,
            train_and_evaluate,
        )

        config = self.config
        point = {k: trial.suggest_categorical(k, choices) for k, choices in search_space(config).items()}
        params = config.trial_params(point)
        tag = f"[trial {self.position[0]}/{self.position[1]} {point_key(point)}]"
        trial.set_user_attr("grid_point", point_key(point))
        trial.set_user_attr("lora_alpha", params["lora_alpha"])
        trial.set_user_attr("effective_params", params)
        # Belt and braces: the examples evaluated are exactly the study's stored subset.
        stored = self.study.user_attrs.get(ATTR_EVAL_SUBSET)
        examples = resolve_eval_subset(self.pf.data.test, stored)
        trial.set_user_attr("eval_ids_sha256", _ids_digest(stored))
        trial.set_user_attr("attempts", self.attempts)
        # Which worker (run --workers) on which machine ran it.
        trial.set_user_attr("worker", os.environ.get("OPTUNA_SEARCH_WORKER", "0"))
        trial.set_user_attr("host", socket.gethostname())
        ckpt = checkpoint_dir(config, point)
        params.update(_read_run_settings(ckpt, config))

        reported: set[int] = set()

        def on_epoch_eval(epoch: int, eval_loss: float) -> None:
            trial.report(eval_loss, step=epoch)
            reported.add(epoch)

        def progress(msg: str) -> None:
            log.info("%s %s", tag, msg)

        log.info("%s starting (attempt %d)", tag, self.attempts)
        oom_retries = []
        gpus = config.train.gpus_per_trial
        while True:
            try:
                if gpus > 1:
                    from optuna_search.objectives._ddp import run_distributed

                    # Same effective batch over the ranks: accumulation is divided by them.
                    ddp_params = {**params, "gradient_accumulation": max(1, params["gradient_accumulation"] // gpus)}
                    res = run_distributed(config, ddp_params, stored, ckpt, deadline=self.deadline, progress=progress)
                else:
                    res = train_and_evaluate(
                        config, params, self.pf.data, examples, ckpt,
                        on_epoch_eval=on_epoch_eval, progress=progress, deadline=self.deadline,
                    )
                break
            except UserError:
                raise
            except BudgetExhausted as e:
                trial.set_user_attr("stopped_by_time_budget", str(e))
                self.budget_stopped = True
                raise _BudgetStop(str(e)) from e
            except OutOfMemory as e:
                if params["batch_size"] == 1:
                    trial.set_user_attr("error", f"out of memory even at per-device batch 1: {e}"[:2000])
                    raise TrialError(str(e)) from e
                # Same effective batch, half the activation memory. Checkpoints of the
                # larger batch would replay a different data order: start this point over.
                oom_retries.append({"batch_size": params["batch_size"], "error": str(e)[:300]})
                params["batch_size"] //= 2
                params["gradient_accumulation"] *= 2
                log.warning("%s out of memory; retrying with per-device batch %d x accumulation %d",
                            tag, params["batch_size"], params["gradient_accumulation"])
                shutil.rmtree(ckpt, ignore_errors=True)
                _write_run_settings(ckpt, params)
                trial.set_user_attr("oom_retries", oom_retries)
            except Exception as e:  # noqa: BLE001 - any training failure is recorded, then the next point runs
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
                log.error("%s failed: %s: %s", tag, type(e).__name__, e)
                raise TrialError(str(e)) from e
        trial.set_user_attr("batch_size", params["batch_size"])
        trial.set_user_attr("gradient_accumulation", params["gradient_accumulation"] // gpus if gpus > 1 else params["gradient_accumulation"])
        trial.set_user_attr("gpus_per_trial", gpus)
        s = res.scores
        from optuna_search.objectives._stats import field_metrics

        per_field = {
            f: field_metrics([p.gold[f] for p in res.predictions], [p.predicted[f] for p in res.predictions], self.pf.data.vocab[f])
            for f in s.fields
        }
        attrs = {
            **{f"{f}_accuracy": s.accuracy[f] for f in s.fields},
            **{f"{f}_accuracy_ci95": per_field[f]["ci95"] for f in s.fields},
            **{f"{f}_macro_f1": per_field[f]["macro_f1"] for f in s.fields},
            **{f"{f}_confusion": per_field[f]["confusion"] for f in s.fields},
            "exact_match_accuracy": sum(all(p.correct(f) for f in s.fields) for p in res.predictions) / s.n,
            "parse_failures": s.parse_failures,
            "invalid_labels": s.invalid_labels,
            "eval_examples": s.n,
            "trainable_params": res.trainable_params,
            "train_loss_per_epoch": res.train_loss_per_epoch,
            "eval_loss_per_epoch": res.eval_loss_per_epoch,
            "train_seconds": round(res.train_seconds, 2),
            "eval_seconds": round(res.eval_seconds, 2),
            "eval_examples_per_second": round(s.n / max(res.eval_seconds, 1e-9), 3),
            "peak_memory_mb": round(res.peak_memory_mb, 1),
            "peak_memory_kind": res.peak_memory_kind,
            "resumed_from_step": res.resumed_from_step,
            **res.extra,
            "environment": environment_fingerprint(),
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        # Epochs finished before a resume were reported by the earlier attempt; report the
        # whole curve on this trial so its learning curve is complete.
        for epoch, loss in enumerate(res.eval_loss_per_epoch, start=1):
            if epoch not in reported:
                trial.report(loss, step=epoch)
        self._save_predictions(trial, res)
        import optuna_dashboard

        from optuna_search.dashboards._notes import trial_note

        optuna_dashboard.save_note(
            trial, trial_note(trial.number, point_key(point), attrs, params, config.to_dict(), s.fields, s.overall)
        )
        log.info(
            "%s done: overall %.3f (%s), %d parse failures, %.1f min",
            tag, s.overall, ", ".join(f"{f} {s.accuracy[f]:.3f}" for f in s.fields), s.parse_failures,
            (res.train_seconds + res.eval_seconds) / 60,
        )
        return s.overall

    def _save_predictions(self, trial, res) -> None:
        from optuna.artifacts import upload_artifact

        from optuna_search.storage._storages import artifact_store

        store = artifact_store(self.config.storage.artifacts)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"predictions-trial{trial.number}.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for p in res.predictions:
                    fh.write(json.dumps({"id": p.id, "gold": p.gold, "predicted": p.predicted, "raw": p.raw}) + "\n")
            artifact_id = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="application/jsonl"
            )
        trial.set_user_attr("predictions_artifact_id", artifact_id)


RUN_SETTINGS = "run_settings.json"


def _read_run_settings(ckpt: Path, config: Config) -> dict[str, int]:
    """Per-device batch and accumulation for this point: the config's, or the smaller
    batch an earlier attempt fell back to after running out of memory (its checkpoints
    were written with that batch, so a resume must use it too)."""
    settings = {"batch_size": config.train.batch_size, "gradient_accumulation": config.train.gradient_accumulation}
    f = ckpt / RUN_SETTINGS
    if f.exists():
        settings.update({k: int(v) for k, v in json.loads(f.read_text()).items() if k in settings})
    return settings


def _write_run_settings(ckpt: Path, params: dict[str, Any]) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / RUN_SETTINGS).write_text(
        json.dumps({"batch_size": params["batch_size"], "gradient_accumulation": params["gradient_accumulation"]})
    )


def _ids_digest(subset: list[dict[str, str]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()
