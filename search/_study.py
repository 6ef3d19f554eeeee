"""Study orchestration: preflight, create/load, run every missing grid point once.

The rule this module enforces: a study is done when every grid point has a COMPLETE
trial. A point is run only when it has no COMPLETE trial and nothing else is about to
run it (a RUNNING trial with a live heartbeat, or a WAITING retry). Points are run in
grid order, each through an explicitly enqueued trial, so two runs of the same command
never evaluate the same point twice; GridSampler still owns the search space, so the
study is an ordinary Optuna grid study for every Optuna tool.
"""

from __future__ import annotations

import json
import logging
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


def preflight(config: Config) -> Preflight:
    """Validate data, labels, model and storage URL. Writes nothing anywhere except the
    demo's cache (for ``builtin:`` sources)."""
    from optuna_search.objectives._baselines import majority_baseline
    from optuna_search.objectives._data import load_dataset_from_config, resolve_eval_subset, select_eval_subset
    from optuna_search.objectives._qlora import check_model_available
    from optuna_search.storage._storages import check_storage_url

    check_storage_url(config.storage.url)
    data = load_dataset_from_config(config.data)
    subset = select_eval_subset(data.test, config.eval.num_samples, config.eval.seed)
    examples = resolve_eval_subset(data.test, subset)
    check_model_available(config.model)
    baselines = {"majority": majority_baseline(data.train.examples, examples, data.fields)}
    return Preflight(config, data, subset, examples, baselines)


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
    sampler = optuna.samplers.GridSampler(search_space(config), seed=config.train.seed)
    if config.study.name in names:
        study = optuna.load_study(study_name=config.study.name, storage=storage, sampler=sampler)
        stored = study.user_attrs.get(ATTR_CONFIG)
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
    study.set_user_attr(ATTR_CONFIG, config.to_dict())
    study.set_user_attr("config_toml", to_toml(config))
    study.set_user_attr(ATTR_EVAL_SUBSET, pf.eval_subset)
    study.set_user_attr(ATTR_BASELINES, pf.baselines)
    study.set_user_attr("grid_size", len(config.grid_points()))
    return study


def _trial_point(trial, keys: list[str]) -> dict[str, Any] | None:
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    if not all(k in params for k in keys):
        return None
    return {k: params[k] for k in keys}


def grid_state(study, config: Config) -> list[dict[str, Any]]:
    """Per grid point: its trials and what to do with it."""
    from optuna.trial import TrialState

    keys = list(config.study.grid)
    points = [{k: grid_value_for_optuna(k, v) for k, v in p.items()} for p in config.grid_points()]
    by_key: dict[str, list] = {point_key(p): [] for p in points}
    for t in study.get_trials(deepcopy=False):
        p = _trial_point(t, keys)
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


def run_study(config: Config, *, retry_failed: bool = False) -> tuple[Any, list[dict[str, Any]], int]:
    """Run every grid point that lacks a COMPLETE trial. Returns (study, state, ran)."""
    import optuna
    from optuna.storages import fail_stale_trials

    pf = preflight(config)
    log.info(
        "data ok: %d train / %d validation / %d test examples; evaluation subset: %d examples (seed %d)",
        len(pf.data.train.examples), len(pf.data.validation.examples), len(pf.data.test.examples),
        len(pf.eval_examples), config.eval.seed,
    )
    study = open_study(config, pf, create=True)
    # Reconcile at once: trials whose process died are failed (and, by the storage's
    # retry callback, re-queued as WAITING) before we decide what is left to do.
    fail_stale_trials(study)
    objective = _Objective(config, pf, study)
    ran = 0
    while True:
        state = grid_state(study, config)
        todo = [r for r in state if r["status"] in ("pending", "waiting") or (retry_failed and r["status"] == "failed")]
        if not todo:
            running = [r for r in state if r["status"] == "running"]
            if running and _wait_for_running(study, config):
                continue
            return study, state, ran
        row = todo[0]
        if row["status"] != "waiting":
            study.enqueue_trial(row["point"], user_attrs={"grid_point": row["key"]})
        objective.position = (sum(r["status"] == "complete" for r in state) + 1, len(state))
        study.optimize(objective, n_trials=1, catch=(TrialError,), gc_after_trial=True)
        ran += 1


def _wait_for_running(study, config: Config) -> bool:
    """Another process holds a point: wait until it finishes or its heartbeat goes stale."""
    from optuna.storages import fail_stale_trials

    log.info("waiting for grid points RUNNING in another process (heartbeat timeout %ds)", config.storage.grace_period)
    deadline = time.monotonic() + config.storage.grace_period + 2 * config.storage.heartbeat_interval
    while time.monotonic() < deadline:
        time.sleep(min(5, config.storage.heartbeat_interval))
        fail_stale_trials(study)
        if not any(r["status"] == "running" for r in grid_state(study, config)):
            return True
    return False


class _Objective:
    def __init__(self, config: Config, pf: Preflight, study) -> None:
        self.config = config
        self.pf = pf
        self.study = study
        self.position = (1, 1)

    def __call__(self, trial) -> float:
        from optuna_search.objectives._data import resolve_eval_subset
        from optuna_search.objectives._qlora import environment_fingerprint, remove_intermediate_checkpoints, train_and_evaluate

        config = self.config
        point = {k: trial.suggest_categorical(k, choices) for k, choices in search_space(config).items()}
        _tag_grid_id(self.study, trial, point)
        params = config.trial_params(point)
        tag = f"[trial {self.position[0]}/{self.position[1]} {point_key(point)}]"
        trial.set_user_attr("grid_point", point_key(point))
        trial.set_user_attr("lora_alpha", params["lora_alpha"])
        trial.set_user_attr("effective_params", params)
        # Belt and braces: the examples evaluated are exactly the study's stored subset.
        stored = self.study.user_attrs.get(ATTR_EVAL_SUBSET)
        examples = resolve_eval_subset(self.pf.data.test, stored)
        trial.set_user_attr("eval_ids_sha256", _ids_digest(stored))
        ckpt = Path(config.train.output_dir) / config.study.name / point_dirname(point)

        reported: set[int] = set()

        def on_epoch_eval(epoch: int, eval_loss: float) -> None:
            trial.report(eval_loss, step=epoch)
            reported.add(epoch)

        def progress(msg: str) -> None:
            log.info("%s %s", tag, msg)

        log.info("%s starting", tag)
        try:
            res = train_and_evaluate(
                config, params, self.pf.data, examples, ckpt, on_epoch_eval=on_epoch_eval, progress=progress
            )
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any training failure is recorded, then the next point runs
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            log.error("%s failed: %s: %s", tag, type(e).__name__, e)
            raise TrialError(str(e)) from e
        s = res.scores
        attrs = {
            **{f"{f}_accuracy": s.accuracy[f] for f in s.fields},
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
        remove_intermediate_checkpoints(ckpt)
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


def _tag_grid_id(study, trial, point: dict[str, Any]) -> None:
    # GridSampler assigns a grid_id only to trials it picks itself; an enqueued trial has
    # none, so GridSampler would neither count the point as visited nor survive its own
    # after_trial on the last point (KeyError 'grid_id'). Record the id it would use.
    sampler = study.sampler
    names = sampler._param_names
    target = tuple(point[n] for n in names)
    for grid_id, values in enumerate(sampler._all_grids):
        if tuple(values) == target:
            storage = study._storage
            storage.set_trial_system_attr(trial._trial_id, "search_space", sampler._search_space)
            storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)
            return


def _ids_digest(subset: list[dict[str, str]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()
