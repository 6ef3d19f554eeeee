"""The report's data (dataclasses): what `collect_report` computes and the Markdown and
HTML renderers (``_render``, ``_figures``) draw; apart, so that none of them imports
another's module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna_search.core import Config, Status, TrialRecord
from optuna_search.objectives import ALPHA, demo_note

# Choosing the best of more trials than this on the test examples inflates its score.
OPTIMISM_TRIALS = 3


@dataclass
class ReportRow:
    """One trial in the report; the score fields are set for COMPLETE trials only."""

    trial: int
    config: str
    state: Status | None
    record: TrialRecord
    accuracy: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, list[float]] = field(default_factory=dict)
    per_field: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each metric of the table besides accuracy: per field, on test."""
    overall: float | None = None
    objective: float | None = None
    """The study's first objective on the objective's split."""
    exact_match: float | None = None
    gap: float | None = None
    eval_loss_rising: bool = False
    single_label: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.state == Status.COMPLETE and self.record.duplicate_of is None and self.overall is not None

    @property
    def validation(self) -> float | None:
        return self.record.split_overall("validation")

    @property
    def train_losses(self) -> list[float]:
        return self.record.train_loss_per_epoch or []

    @property
    def eval_losses(self) -> list[float]:
        return self.record.eval_loss_per_epoch or []


@dataclass
class Test:
    only_a: int
    only_b: int
    p: float
    p_holm: float | None = None
    """Holm-adjusted over the family of comparisons it belongs to."""

    @property
    def significant(self) -> bool:
        return (self.p_holm if self.p_holm is not None else self.p) < ALPHA


@dataclass
class Comparison:
    a: str
    b: str
    tests: dict[str, Test]
    """Per field and "overall" (all fields right)."""


@dataclass
class EarlySignal:
    """Does a validation point predict the final validation accuracy? (Spearman)"""

    point: int
    fraction: float | None
    metric: str
    rho: float
    p: float
    n: int


@dataclass
class RungEntry:
    """One configuration at a decided successive-halving rung."""

    config: str
    score: float | None
    """The study's prune_on metric there (after the rung's cool-down branch if it had one)."""
    promoted: bool
    p_worse: float | None = None
    """Left out: one-sided paired t-test p-value that it is worse than the last promoted
    configuration on the same validation examples (None without per-example scores)."""
    stable: float | None = None
    """With a cool-down branch: the metric measured before it, on the run itself."""


@dataclass
class RungDecision:
    """A decided rung: where, what was compared, what went on and the evidence."""

    rung: int
    fraction: float
    metric: str
    cooldown_steps: int | None
    entries: list[RungEntry]
    steps: list[str] = field(default_factory=list)
    """Adaptive promotion: each step, what it learned at the next rung and decided."""

    @property
    def unsupported(self) -> list[RungEntry]:
        """Left out although a paired test does not find them worse than the cut."""
        return [e for e in self.entries if not e.promoted and e.p_worse is not None and e.p_worse >= ALPHA]


@dataclass
class Report:
    study: str
    config: Config
    n_eval: int
    rows: list[ReportRow]
    baselines: dict[str, dict[str, float]]
    validation_baselines: dict[str, dict[str, float]]
    comparisons: list[Comparison]
    best: ReportRow | None
    best_vs_baselines: list[Comparison]
    front: list[ReportRow]
    ensembles: list[dict[str, Any]]
    reliability: dict[str, dict[str, list[dict[str, float]]]]
    early_signal: list[EarlySignal]
    rungs: list[RungDecision]
    importances: dict[str, float] | None
    importance_note: str
    recommendation: list[str]
    generated: str
    majority_labels: dict[str, str]

    @property
    def fields(self) -> list[str]:
        return list(self.config.data.fields)

    @property
    def split(self) -> str:
        return self.config.eval.objective_split

    @property
    def objectives(self) -> list[str]:
        return list(self.config.study.objectives)

    @property
    def demo(self) -> str | None:
        """What the numbers can say with the built-in tiny model (None: a real model)."""
        return demo_note(self.config)

    @property
    def complete(self) -> list[ReportRow]:
        return [r for r in self.rows if r.complete]

    @property
    def optimistic(self) -> bool:
        return self.split == "test" and len(self.complete) > OPTIMISM_TRIALS
