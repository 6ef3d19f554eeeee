"""The typed record of a trial and the names of what a study stores.

Trials carry their results as Optuna user attrs (what optuna-dashboard, ``optuna
trials`` and the README show). :class:`TrialRecord` is the only code that writes or reads
those names: the objective adapter writes a record, and the summary, notes, report,
status and CLI read records back with :meth:`TrialRecord.from_trial`. The names are the
ones the README documents, so studies written by earlier versions stay readable.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna_search.core._metric import BY_METRIC, EXTRA, METRICS
from optuna_search.core._params import short_point_key

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


class Status(enum.Enum):
    """Where a trial stands, and a point of the search space by its trials: the one
    vocabulary of states every package speaks (Optuna's trial states are read into it
    here, in ``of_trial``, and nowhere else)."""

    PENDING = "pending"
    """A point with no trial yet."""
    WAITING = "waiting"
    RUNNING = "running"
    PAUSED = "paused"
    """RUNNING in Optuna, paused at a successive-halving rung (``PAUSED_ATTR``)."""
    FAILED = "failed"
    """Optuna's FAIL (an error, or an interruption that the next run resumes); a point is
    FAILED when its last trial failed with an error (it waits for --retry-failed)."""
    COMPLETE = "complete"
    PRUNED = "pruned"

    @property
    def finished(self) -> bool:
        return self in (Status.COMPLETE, Status.PRUNED)

    @classmethod
    def of_trial(cls, optuna_state: str, *, paused: bool = False) -> Status:
        """An Optuna trial state's name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
        if optuna_state == "RUNNING":
            return cls.PAUSED if paused else cls.RUNNING
        return {"COMPLETE": cls.COMPLETE, "PRUNED": cls.PRUNED, "FAIL": cls.FAILED, "WAITING": cls.WAITING}[
            optuna_state
        ]


CALIBRATION_METRICS = ("log_loss", "brier", "ece")
PAUSED_ATTR = "optuna_search:paused_at_rung"
"""The system attr that marks a RUNNING trial paused at a successive-halving rung (the
rung, or None once resumed): the one representation of "paused". A record reads such a
trial's state as PAUSED."""


@dataclass
class SplitScores:
    """A trial's scores on one split's fixed examples, per label field."""

    accuracy: dict[str, float]
    n: int
    parse_failures: int = 0
    exact_match: float | None = None
    ci95: dict[str, list[float]] = field(default_factory=dict)
    per_field: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each metric of the table besides accuracy (``core._metric.EXTRA``): per field, its value."""
    confusion: dict[str, Any] = field(default_factory=dict)
    invalid_labels: dict[str, int] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per field: log_loss, brier, ece (only for label-scoring evaluation)."""
    label_logprob: float | None = None
    """Mean over examples and fields of the log-probability of the correct label (label
    scoring only): moves before accuracy does, so it is the early signal for pruning."""

    @property
    def fields(self) -> list[str]:
        return list(self.accuracy)

    @property
    def overall(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy)

    def value(self, metric: str, field_name: str) -> float | None:
        """A metric of the table on one field."""
        scores = self.accuracy if metric == "accuracy" else self.per_field.get(metric, {})
        return scores.get(field_name)

    def overall_of(self, metric: str) -> float | None:
        """A metric of the table over all fields, as it aggregates (None: a field lacks it)."""
        values = [self.value(metric, f) for f in self.accuracy]
        if not values or any(v is None for v in values):
            return None
        return BY_METRIC[metric].aggregate([v for v in values if v is not None])

    def metric(self, name: str) -> float | None:
        """A metric by the name a study objective gives it: over all fields (its ``overall``
        name: overall_accuracy, macro_f1, ...) or on one (``<field>_<metric>``)."""
        if name == "accuracy":
            return self.overall
        for m in METRICS:
            if name == m.overall:
                return self.overall_of(m.name)
        for m in sorted(METRICS, key=lambda m: -len(m.name)):  # balanced_accuracy before accuracy
            if name.endswith(f"_{m.name}"):
                return self.value(m.name, name[: -len(m.name) - 1])
        return None

    def single_label(self) -> dict[str, str]:
        """Fields whose predictions are all one label (from the confusion matrices)."""
        out = {}
        for f, c in self.confusion.items():
            cols = [sum(row[j] for row in c["matrix"]) for j in range(len(c["labels"]))]
            used = [c["labels"][j] for j, n in enumerate(cols) if n]
            if len(used) == 1:
                out[f] = used[0]
        return out


# (record attribute, user attr) for plain values, written and read as they are.
_PLAIN = (
    ("point", "grid_point"),
    ("lora_alpha", "lora_alpha"),
    ("effective_params", "effective_params"),
    ("eval_ids_sha256", "eval_ids_sha256"),
    ("validation_ids_sha256", "validation_ids_sha256"),
    ("attempts", "attempts"),
    ("worker", "worker"),
    ("host", "host"),
    ("eval_method", "eval_method"),
    ("trainable_params", "trainable_params"),
    ("train_loss_per_epoch", "train_loss_per_epoch"),
    ("eval_loss_per_epoch", "eval_loss_per_epoch"),
    ("validation_accuracy_curve", "validation_accuracy_curve"),
    ("train_seconds", "train_seconds"),
    ("eval_seconds", "eval_seconds"),
    ("eval_examples_per_second", "eval_examples_per_second"),
    ("peak_memory_mb", "peak_memory_mb"),
    ("peak_memory_kind", "peak_memory_kind"),
    ("resumed_from_step", "resumed_from_step"),
    ("optimizer_steps", "optimizer_steps"),
    ("compute_dtype", "compute_dtype"),
    ("environment", "environment"),
    ("batch_size", "batch_size"),
    ("gradient_accumulation", "gradient_accumulation"),
    ("gpus_per_trial", "gpus_per_trial"),
    ("oom_retries", "oom_retries"),
    ("predictions_artifact_id", "predictions_artifact_id"),
    ("validation_predictions_artifact_id", "validation_predictions_artifact_id"),
    ("error", "error"),
    ("stopped_by_time_budget", "stopped_by_time_budget"),
    ("orphaned", "orphaned"),
    ("interrupted", "interrupted"),
    ("pruned_at_step", "pruned_at_step"),
    ("duplicate_of", "duplicate_of"),
    ("validation_curve", "validation_curve"),
    ("rung", "rung"),
    ("rung_values", "rung_values"),
    ("cooldown_curve", "cooldown_curve"),
    ("rung_examples", "rung_examples"),
    ("max_steps", "max_steps"),
    ("warm_start_from", "warm_start_from"),
    ("adapter_dir", "adapter_dir"),
    ("adapter_sha256", "adapter_sha256"),
    ("tracking", "tracking"),
    ("eval_batch_size", "eval_batch_size"),
    ("seconds_spent", "seconds_spent"),
    ("resumed_at", "resumed_at"),
)


@dataclass
class TrialRecord:
    """Everything optuna-search records on a trial. ``None`` = not recorded (yet)."""

    number: int | None = None
    state: Status | None = None
    """COMPLETE, PRUNED, FAILED, RUNNING, WAITING, or PAUSED for a RUNNING trial paused
    at a rung."""
    values: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """Optuna's trial params: the searched values."""
    datetime_start: Any = None
    datetime_complete: Any = None
    point: str | None = None
    lora_alpha: float | None = None
    effective_params: dict[str, Any] | None = None
    eval_ids_sha256: str | None = None
    validation_ids_sha256: str | None = None
    attempts: int | None = None
    worker: str | None = None
    host: str | None = None
    eval_method: str | None = None
    test: SplitScores | None = None
    validation: SplitScores | None = None
    trainable_params: int | None = None
    train_loss_per_epoch: list[float] | None = None
    eval_loss_per_epoch: list[float] | None = None
    validation_accuracy_curve: list[list[float]] | None = None
    """[validation point, overall validation accuracy] pairs: the intermediate values."""
    train_seconds: float | None = None
    eval_seconds: float | None = None
    eval_examples_per_second: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    resumed_from_step: int | None = None
    optimizer_steps: int | None = None
    compute_dtype: str | None = None
    environment: dict[str, str] | None = None
    batch_size: int | None = None
    gradient_accumulation: int | None = None
    gpus_per_trial: int | None = None
    oom_retries: list[dict[str, Any]] | None = None
    predictions_artifact_id: str | None = None
    """Per-example predictions on the test subset (JSON lines)."""
    validation_predictions_artifact_id: str | None = None
    error: str | None = None
    stopped_by_time_budget: str | None = None
    orphaned: str | None = None
    interrupted: str | None = None
    pruned_at_step: int | None = None
    duplicate_of: int | None = None
    """Written by earlier versions when a sampler proposed a point again (no longer happens)."""
    validation_curve: list[dict[str, Any]] | None = None
    """Per validation point: point, step, fraction of training, accuracy, label_logprob."""
    rung: int | None = None
    """Successive halving: the last rung this configuration reached (0-based)."""
    rung_values: dict[str, float] | None = None
    """Successive halving: the study's prune_on metric at each rung reached ("0", "1", ...);
    under warmup_stable_decay, after the rung's cool-down branch."""
    cooldown_curve: list[dict[str, Any]] | None = None
    """Successive halving with study.cooldown: per rung, the validation scores after its
    cool-down branch (point, step, fraction, accuracy, label_logprob, cooldown_steps)."""
    rung_examples: dict[str, list[float]] | None = None
    """Successive halving: per rung reached ("0", ...), the prune_on metric of each
    validation example at that rung (the evidence a paired comparison at the cut uses)."""
    max_steps: int | None = None
    """Optimizer steps of the whole training (optimizer_steps is where it stopped)."""
    warm_start_from: str | None = None
    """A copy of a finished trial of another study (study name and trial number)."""
    adapter_dir: str | None = None
    """Where the trained LoRA adapter was saved (final-adapter folder of the point)."""
    adapter_sha256: str | None = None
    tracking: dict[str, str] | None = None
    """Tracker runs of this trial (tracker -> run name / log folder)."""
    eval_batch_size: int | None = None
    """The evaluation batch its scores were computed with (smaller than eval.batch_size
    after running out of memory); `predict` uses the same."""
    resumed_at: float | None = None
    """When its current segment started (Unix time): a running trial's time so far."""
    seconds_spent: float | None = None
    """Wall time of this trial's segments (model load, training, evaluation), summed over
    its resumes; the time between them (a paused configuration, a killed session) is not
    counted."""

    # -- derived ---------------------------------------------------------------------
    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None

    @property
    def overall(self) -> float | None:
        """Overall accuracy on the test examples (the objective's own value may be on
        validation)."""
        return self.test.overall if self.test else None

    def accuracy(self, field_name: str, split: str = "test") -> float | None:
        scores = self.test if split == "test" else self.validation
        return scores.accuracy.get(field_name) if scores else None

    def split_overall(self, split: str) -> float | None:
        scores = self.test if split == "test" else self.validation
        return scores.overall if scores else None

    @property
    def minutes(self) -> float | None:
        """Time spent on the trial: its segments' wall time (earlier versions: training plus
        evaluation of the last segment)."""
        if self.seconds_spent is not None:
            return self.seconds_spent / 60
        if self.train_seconds is None and self.eval_seconds is None:
            return None
        return ((self.train_seconds or 0) + (self.eval_seconds or 0)) / 60

    def seconds(self, now: float, *, paused: bool = False) -> float:
        """Time spent on this trial by ``now`` (Unix time): its finished segments, and the
        running one's time so far; a paused trial's wait is not counted. Studies of earlier
        versions: training plus evaluation, else the trial's span."""
        done = self.seconds_spent
        if done is None and (self.train_seconds is not None or self.eval_seconds is not None):
            done = (self.train_seconds or 0) + (self.eval_seconds or 0)
        if self.state == Status.RUNNING and not paused:
            start = self.resumed_at or (self.datetime_start.timestamp() if self.datetime_start else now)
            return (done or 0.0) + max(0.0, now - start)
        if done is None and self.datetime_start is not None and self.datetime_complete is not None:
            return (self.datetime_complete - self.datetime_start).total_seconds()
        return done or 0.0

    @property
    def eval_seconds_per_example(self) -> float | None:
        return 1 / self.eval_examples_per_second if self.eval_examples_per_second else None

    @property
    def label(self) -> str:
        """The trial's point for people (floats shortened), else its number."""
        return short_point_key(self.params) if self.params else (self.point or f"trial {self.number}")

    def scores(self, split: str) -> SplitScores | None:
        return self.test if split == "test" else self.validation

    def objective_value(self, name: str, split: str) -> float | None:
        """The value of one of the study's objectives (study.objectives) on ``split``."""
        if name == "eval_seconds_per_example":
            return self.eval_seconds_per_example
        if name in ("peak_memory_mb", "trainable_params", "train_seconds"):
            return getattr(self, name)
        scores = self.scores(split)
        return scores.metric(name) if scores else None

    # -- user attrs ------------------------------------------------------------------
    def to_user_attrs(self) -> dict[str, Any]:
        """The user attrs of everything recorded (None values are left out)."""
        out = {attr: getattr(self, name) for name, attr in _PLAIN if getattr(self, name) is not None}
        if self.test is not None:
            out.update(_split_attrs(self.test, prefix=""))
        if self.validation is not None:
            out.update(_split_attrs(self.validation, prefix="validation_"))
        return out

    @classmethod
    def from_user_attrs(cls, ua: dict[str, Any], fields: list[str], **trial_fields: Any) -> TrialRecord:
        kw = {name: ua[attr] for name, attr in _PLAIN if attr in ua}
        return cls(
            test=_read_split(ua, fields, ""), validation=_read_split(ua, fields, "validation_"), **kw, **trial_fields
        )

    @classmethod
    def from_trial(cls, trial: FrozenTrial, fields: list[str]) -> TrialRecord:
        """From an Optuna ``FrozenTrial`` (or anything with the same attributes)."""
        paused = trial.system_attrs.get(PAUSED_ATTR) is not None
        return cls.from_user_attrs(
            trial.user_attrs,
            fields,
            number=trial.number,
            state=Status.of_trial(trial.state.name, paused=paused),
            values=list(trial.values) if trial.values else None,
            params=dict(trial.params),
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
        )

    def replace(self, **changes: Any) -> TrialRecord:
        return dataclasses.replace(self, **changes)


def _split_attrs(s: SplitScores, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in s.accuracy:
        for m in METRICS:
            if (v := s.value(m.name, f)) is not None:
                out[f"{prefix}{f}_{m.name}"] = v
        if f in s.ci95:
            out[f"{prefix}{f}_accuracy_ci95"] = s.ci95[f]
        if f in s.confusion:
            out[f"{prefix}{f}_confusion"] = s.confusion[f]
        for metric, v in s.calibration.get(f, {}).items():
            out[f"{prefix}{f}_{metric}"] = v
    for m in METRICS:
        if (v := s.overall_of(m.name)) is not None:
            out[f"{prefix}{m.overall}"] = v
    if s.label_logprob is not None:
        out[f"{prefix}label_logprob"] = s.label_logprob
    names = (
        ("eval_examples", "parse_failures", "invalid_labels", "exact_match_accuracy")
        if not prefix
        else ("examples", "parse_failures", "invalid_labels", "exact_match_accuracy")
    )
    values: tuple[Any, ...] = (s.n, s.parse_failures, s.invalid_labels or None, s.exact_match)
    for name, value in zip(names, values):
        if value is not None:
            out[f"{prefix}{name}"] = value
    return out


def _read_split(ua: dict[str, Any], fields: list[str], prefix: str) -> SplitScores | None:
    if not all(f"{prefix}{f}_accuracy" in ua for f in fields):
        return None
    n_key = f"{prefix}eval_examples" if not prefix else f"{prefix}examples"

    def per_field(suffix: str) -> dict[str, Any]:
        return {f: ua[f"{prefix}{f}{suffix}"] for f in fields if f"{prefix}{f}{suffix}" in ua}

    calibration = {
        f: {m: ua[f"{prefix}{f}_{m}"] for m in CALIBRATION_METRICS if f"{prefix}{f}_{m}" in ua} for f in fields
    }
    return SplitScores(
        accuracy={f: ua[f"{prefix}{f}_accuracy"] for f in fields},
        n=ua.get(n_key, 0),
        parse_failures=ua.get(f"{prefix}parse_failures", 0),
        exact_match=ua.get(f"{prefix}exact_match_accuracy"),
        ci95=per_field("_accuracy_ci95"),
        per_field={m.name: values for m in EXTRA if (values := per_field(f"_{m.name}"))},
        confusion=per_field("_confusion"),
        invalid_labels=ua.get(f"{prefix}invalid_labels") or {},
        calibration={f: c for f, c in calibration.items() if c},
        label_logprob=ua.get(f"{prefix}label_logprob"),
    )


# -- the study -----------------------------------------------------------------------------
@dataclass
class StudyMeta:
    """What optuna-search stores on a study (its user attrs): what makes its trials
    comparable, fixed when it is created. Read with :meth:`from_user_attrs`; written only
    through ``storage.study._records.write_meta``."""

    config: dict[str, Any] | None = None
    """The resolved config, password masked."""
    config_toml: str | None = None
    eval_subset: list[dict[str, str]] | None = None
    """The fixed test examples: ids and SHA-256 of each."""
    validation_subset: list[dict[str, str]] | None = None
    baselines: dict[str, dict[str, float]] | None = None
    """Per baseline, on the test subset: accuracy per field, overall, and the F1 metrics."""
    baseline_predictions: dict[str, dict[str, dict[str, str]]] | None = None
    validation_baselines: dict[str, dict[str, float]] | None = None
    grid_size: int | None = None
    ensembles: list[dict[str, Any]] | None = None
    halving: dict[str, Any] | None = None
    """Successive halving: the promotions decided at each rung (decided once)."""
    data_digest: dict[str, str] | None = None
    """SHA-256 of the training, validation and test files when the study was created."""
    warm_start: dict[str, Any] | None = None
    """Where the warm-start trials came from."""
    labels: dict[str, list[str]] | None = None
    """Each field's label set, in the order trials score them (what `predict` needs)."""

    @classmethod
    def from_user_attrs(cls, ua: dict[str, Any]) -> StudyMeta:
        return cls(**{f.name: ua.get(f.name) for f in dataclasses.fields(cls)})

    def to_user_attrs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
