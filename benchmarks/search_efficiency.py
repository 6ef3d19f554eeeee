"""How much of the grid's compute each search strategy needs to find what the grid finds:
the full grid run once, every strategy replayed offline from its curves over many seeds,
then the best strategy run live once.

1. The grid: every point of the space trains to its end through the project's objective,
   with validation points fine enough for every strategy's rungs (36 over training:
   every 1/36 holds 1/9, 1/4 and 1/3), label scoring on the fixed validation subset;
   per point and validation point it keeps every example's correctness and the
   log-probability of its correct labels (the curves are cached in ``--curves``).
2. Replay: per seed, the validation examples are resampled with replacement (the noise
   a strategy's choices meet; the grid's best is the best on that resample), and each
   strategy is run against the curves, charged the fraction of training each
   configuration used: the full grid (in grid order), random order without repeats, TPE +
   Hyperband on accuracy (as the search presets did: repeats allowed, 4 validation
   points), TPE without repeats + Hyperband on the label log-prob, brute force + Optuna's
   successive-halving pruner on the label log-prob, GP without repeats, and successive
   halving over checkpoints (this project's scheduler; rungs 1/9, 1/3, 1, eta 3, and
   rungs 1/4, 1, eta 4 as the search presets run it) on accuracy and on the label
   log-prob.
   Per strategy: P(within 1 point of the grid's best validation accuracy at <= 1/3 of
   the grid's compute), the median compute fraction when it gets there, the median gap
   to the grid's best at 1/3 of the compute, the compute it spends in all and its gap to
   the grid's best at its end. The last two lines: the presets' strategy, then successive
   halving on the label log-prob (the issue's headline line).
3. Live: the winning strategy runs once as a real study; its compute fraction and best.

   Per strategy and space also: the compute (fraction of the grid's) by which it is within
   1 point of the grid's best in at least 90% of the seeds, beside Optuna's native
   strategies and the oracle (training only the configuration that wins). Across the
   spaces: each candidate's (successive halving, fixed or adaptive) compute over Optuna's
   best native strategy's, per space; the candidate whose worst ratio is lowest; and last
   the default strategy's (the search presets') worst ratio over the spaces.

   With ``--set study.cooldown=true`` every point also pauses at 1/9, 1/4, 1/3 and 1/2 of
   its training and is scored after a cool-down branch there (the branches are
   discarded: the run trains on as if never paused), and the replay adds successive
   halving on those scores, charged for the branches, with top-1/eta promotions and
   with paired ones (also promoted, up to as many again: whoever a one-sided paired
   t-test does not find worse than the last promoted); it prints the early signal after
   the cool-down and what a rung costs (its validation pass, its branch).
   ``--compare-set KEY=VALUE`` also trains (or reads) each grid with those overrides and
   says whether its winner is the same (e.g. the schedule against cosine).

    python benchmarks/search_efficiency.py [--space demo] [--space schedule] [--seeds 200] [--no-live]
    python benchmarks/search_efficiency.py --space '{lora_r=[4,16], learning_rate=[1e-3,3e-3]}' --set train.epochs=1
    python benchmarks/search_efficiency.py --space real --space real-wsd   # SmolLM2 on the real reports
    python benchmarks/search_efficiency.py --space demo --space schedule --set study.cooldown=true \
        --compare-set "train.lr_scheduler='cosine'" --compare-set study.cooldown=false --no-live
    python benchmarks/search_efficiency.py --smoke        # 2 points, 9 validation points, 5 seeds (seconds)

The grid's curves are cached per space (``$OPTUNA_SEARCH_CACHE/benchmarks``): a second run
replays without training.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

POINTS = 36  # validation points over training, demo: every 1/36 holds 1/9, 1/4 and 1/3
REAL_POINTS = 8  # the real model: every 1/8, which holds 1/4 and 1/2 (a validation point costs it half a minute)
RUNGS = [1 / 9, 1 / 3, 1.0]
COOLDOWN_RUNGS = (1 / 9, 1 / 4, 1 / 3, 1 / 2)
"""Where the grid's points are also scored after a cool-down branch (study.cooldown)."""
DEMO = {"lora_r": [4, 8, 16, 32], "learning_rate": [2e-3, 5e-3, 1e-2]}
REAL = {"lora_r": [4, 16], "learning_rate": [5e-4, 2e-3]}


# -- 1. the grid's curves -------------------------------------------------------------------
def grid_curves(
    space: dict[str, list], preset: str, sets: list[str], path: Path, points: int = POINTS
) -> dict[str, Any]:
    """Train every point once; per point, per validation point: fraction, per-example
    correctness (all fields, as 0/1 per field) and gold-label log-probability. Under
    ``study.cooldown`` each point also pauses at every candidate rung (``COOLDOWN_RUNGS``)
    and is scored after its cool-down branch there, as successive halving does; the run
    itself trains on undisturbed (the branches are discarded)."""
    if path.exists():
        return json.loads(path.read_text())
    from optuna_search.core import enumerate_grid, point_key
    from optuna_search.objectives import QLoRAObjective, TrialHooks, TrialRequest, prepare_study_data, quiet_libraries
    from optuna_search.search import load_config

    quiet_libraries()
    config = load_config(preset=preset, sets=[*sets, "eval.method='score'"])
    data = prepare_study_data(
        config.data, config.eval, train_seed=config.train.seed, max_length=config.model.max_length
    )
    fractions = tuple(k / points for k in range(1, points + 1))
    segments = (*COOLDOWN_RUNGS, 1.0) if config.study.cooldown else (1.0,)
    out: dict[str, Any] = {
        "space": space,
        "preset": preset,
        "sets": sets,
        "points": {},
        "lr_scheduler": config.train.lr_scheduler,
        "cooldown": config.study.cooldown,
    }
    work = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    for n, point in enumerate(enumerate_grid(space)):
        curve: list[dict[str, Any]] = []
        cooled: list[dict[str, Any]] = []
        marks: dict[str, float] = {}

        def record(vp, curve=curve) -> bool:
            curve.append({"fraction": vp.fraction, **_examples(vp.evaluation)})
            return False

        def progress(line: str, marks=marks) -> None:
            if line.startswith("cool-down branch"):
                marks["branch"] = time.monotonic()
            elif line.startswith("after the cool-down"):
                marks["branch_s"] = marks.get("branch_s", 0.0) + time.monotonic() - marks.pop("branch")

        t0 = time.monotonic()
        objective = QLoRAObjective(config)
        for until in segments:
            request = TrialRequest(
                config.trial_params(point),
                data.dataset,
                data.test_examples,
                data.validation_examples,
                work / f"p{n}",
                train_until=until,
                validate_at=fractions,
            )
            result = objective(request, TrialHooks(on_validation=record, progress=progress))
            cooled += [
                {
                    "fraction": vp.fraction,
                    "cost": vp.cooldown_steps / result.max_steps,
                    "eval_s": vp.evaluation.seconds,
                    **_examples(vp.evaluation),
                }
                for vp in result.cooldown_curve
                if vp.evaluation is not None
            ]
        out["points"][point_key(point)] = {
            "params": point,
            "steps": result.max_steps,
            "curve": curve,
            "cooldown": cooled,
            "seconds": time.monotonic() - t0,
            "branch_s": marks.get("branch_s", 0.0),
            "eval_s": statistics.mean(c["eval_s"] for c in curve) if curve and "eval_s" in curve[0] else None,
        }
        print(
            f"grid {n + 1}: {point_key(point)}: final validation {100 * _mean_acc(curve[-1]['correct']):.1f}% "
            f"({time.monotonic() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    path.write_text(json.dumps(out))
    return out


def _examples(evaluation) -> dict[str, Any]:
    """Per example: correctness of each field (0/1) and the mean gold-label log-probability."""
    preds = evaluation.predictions
    return {
        "correct": [[int(p.correct(f)) for f in p.gold] for p in preds],
        "logprob": [sum(math.log(max(p.probs[f][p.gold[f]], 1e-12)) for f in p.gold) / len(p.gold) for p in preds],
        "eval_s": evaluation.seconds,
    }


def _mean_acc(correct: list[list[int]], idx: list[int] | None = None) -> float:
    rows = correct if idx is None else [correct[i] for i in idx]
    return sum(sum(r) / len(r) for r in rows) / len(rows)


# -- 2. replay -----------------------------------------------------------------------------
class Curves:
    """The grid's curves on one resample of the validation examples."""

    def __init__(self, data: dict[str, Any], seed: int) -> None:
        self.keys = list(data["points"])
        self.params = {k: v["params"] for k, v in data["points"].items()}
        n = len(data["points"][self.keys[0]]["curve"][0]["correct"])
        rng = random.Random(seed)
        idx = [rng.randrange(n) for _ in range(n)] if seed >= 0 else list(range(n))
        self.idx, self.raw = idx, data["points"]
        self.acc = {k: [_mean_acc(p["correct"], idx) for p in v["curve"]] for k, v in data["points"].items()}
        self.lp = {k: [sum(p["logprob"][i] for i in idx) / n for p in v["curve"]] for k, v in data["points"].items()}
        self.best = max(a[-1] for a in self.acc.values())
        self.fractions = {k: [p["fraction"] for p in v["curve"]] for k, v in data["points"].items()}
        self.cooled = {k: v.get("cooldown") or [] for k, v in data["points"].items()}
        self.has_cooldown = all(self.cooled.values())

    def at(self, metric: str, key: str, fraction: float) -> float:
        """The metric at the validation point nearest ``fraction`` of training."""
        i = min(range(len(self.fractions[key])), key=lambda j: abs(self.fractions[key][j] - fraction))
        return (self.acc if metric == "accuracy" else self.lp)[key][i]

    def cooled_at(self, key: str, fraction: float) -> dict[str, Any]:
        """The cool-down branch's scores at the rung nearest ``fraction``."""
        return min(self.cooled[key], key=lambda c: abs(c["fraction"] - fraction))

    def per_example(self, metric: str, key: str, fraction: float, cooldown: bool) -> list[float]:
        """Per resampled example: mean field correctness or gold-label log-probability."""
        if cooldown:
            point = self.cooled_at(key, fraction)
        else:
            i = min(range(len(self.fractions[key])), key=lambda j: abs(self.fractions[key][j] - fraction))
            point = self.raw[key]["curve"][i]
        if metric == "accuracy":
            return [sum(point["correct"][i]) / len(point["correct"][i]) for i in self.idx]
        return [point["logprob"][i] for i in self.idx]

    def cooled_metric(self, metric: str, key: str, fraction: float) -> float:
        values = self.per_example(metric, key, fraction, True)
        return sum(values) / len(values)


class Run:
    """What a strategy spent and found: events (compute so far, best full-trained accuracy)."""

    def __init__(self, curves: Curves) -> None:
        self.curves, self.spent, self.events = curves, 0.0, []
        self.decisions: list[dict[str, Any]] = []
        """Adaptive promotion: each step's evidence and decision."""
        self.best = -1.0

    def train(self, key: str, to: float, done: float = 0.0, extra: float = 0.0) -> None:
        """Train ``key`` from ``done`` to ``to`` of its training (plus ``extra``: a
        cool-down branch, in the same unit)."""
        self.spent += (to - done + extra) / len(self.curves.keys)
        if to >= 1.0:
            self.best = max(self.best, self.curves.acc[key][-1])
        self.events.append((self.spent, self.best))

    def reached(self, tolerance: float = 0.01) -> float | None:
        """The compute fraction when the best came within ``tolerance`` of the grid's best."""
        return next((spent for spent, best in self.events if best >= self.curves.best - tolerance), None)

    def gap_at(self, budget: float) -> float:
        best = max([b for s, b in self.events if s <= budget + 1e-9] + [-1.0])
        return self.curves.best - best if best >= 0 else self.curves.best


def in_order(curves: Curves, order: list[str]) -> Run:
    run = Run(curves)
    for k in order:
        run.train(k, 1.0)
    return run


def optuna_strategy(
    curves: Curves,
    seed: int,
    sampler: Callable[[int], Any],
    pruner: Callable[[], Any],
    metric: str,
    rungs: list[float],
    n_trials: int,
    no_repeats: bool,
) -> Run:
    """An Optuna sampler and pruner over the curves: each trial reports the metric at the
    validation points ``rungs`` (fractions) and may be pruned there; a repeated point
    (allowed when ``no_repeats`` is False, as Optuna's samplers do) costs nothing."""
    from optuna.distributions import CategoricalDistribution

    from optuna_search.core import point_key
    from optuna_search.search.setup import NoRepeatSampler

    run = Run(curves)
    space = {
        k: CategoricalDistribution(sorted({p[k] for p in curves.params.values()}))
        for k in next(iter(curves.params.values()))
    }
    points = [dict(p) for p in curves.params.values()]
    s = NoRepeatSampler(sampler, space, seed, points) if no_repeats else sampler(seed)
    study = optuna.create_study(direction="maximize", sampler=s, pruner=pruner())
    trained: set[str] = set()

    def objective(trial: optuna.Trial) -> float:
        point = {k: trial.suggest_categorical(k, d.choices) for k, d in space.items()}
        key = point_key(point)
        if key in trained:
            return curves.acc[key][-1]  # a repeat: the earlier result, no training
        trained.add(key)
        done = 0.0
        for step, f in enumerate(rungs, start=1):
            run.train(key, f, done)
            done = f
            if f < 1.0:
                trial.report(curves.at(metric, key, f), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return curves.acc[key][-1]

    study.optimize(objective, n_trials=n_trials)
    return run


def halving_strategy(
    curves: Curves,
    metric: str,
    rungs: list[float] = RUNGS,
    eta: int = 3,
    cooldown: bool = False,
    paired: float | None = None,
    adaptive: Any = None,
) -> Run:
    """This project's successive halving over checkpoints (``search._halving``);
    ``cooldown``: each rung but the last scored after its cool-down branch (charged);
    ``paired``: also promoted, up to twice as many, whoever a one-sided paired t-test on
    the rung's per-example scores does not find worse than the last promoted one at this
    significance level."""
    from optuna_search.search.loop import HalvingConfig, Promote, PruneRest, Status, Train, next_action

    run = Run(curves)
    state: dict[str, dict[str, Any]] = {
        k: {"state": Status.PENDING, "reached": -1, "metrics": {}, "examples": {}} for k in curves.keys
    }
    promoted: dict[int, list[str]] = {}
    open_rungs: set[int] = set()
    while True:
        configs = [
            HalvingConfig(k, v["state"], v["reached"], v["metrics"], i, v["examples"])
            for i, (k, v) in enumerate(state.items())
        ]
        a = next_action(
            configs,
            promoted,
            n_configs=len(curves.keys),
            n_rungs=len(rungs),
            eta=eta,
            adaptive=adaptive,
            open_rungs=frozenset(open_rungs),
        )
        if isinstance(a, Train):
            s, f = state[a.key], rungs[a.rung]
            cooled = cooldown and f < 1.0
            run.train(
                a.key,
                f,
                rungs[s["reached"]] if s["reached"] >= 0 else 0.0,
                curves.cooled_at(a.key, f)["cost"] if cooled else 0.0,
            )
            s["reached"] = a.rung
            s["metrics"][a.rung] = curves.cooled_metric(metric, a.key, f) if cooled else curves.at(metric, a.key, f)
            if adaptive is not None:
                s["examples"][a.rung] = curves.per_example(metric, a.key, f, cooled)
            s["state"] = Status.COMPLETE if a.rung == len(rungs) - 1 else Status.PAUSED
        elif isinstance(a, Promote):
            if a.evidence is not None:
                run.decisions.append(a.evidence)
            (open_rungs.discard if a.final else open_rungs.add)(a.rung)
            keys = list(a.keys)
            if paired is not None:
                keys += not_worse(curves, metric, a.rung, rungs[a.rung], cooldown, keys, state, paired)
            promoted[a.rung] = keys
        elif isinstance(a, PruneRest):
            for k in a.keys:
                state[k]["state"] = Status.PRUNED
        else:
            return run


def not_worse(
    curves: Curves,
    metric: str,
    rung: int,
    fraction: float,
    cooldown: bool,
    keys: list[str],
    state: dict[str, dict[str, Any]],
    alpha: float,
) -> list[str]:
    """The configurations left out at a rung that a one-sided paired t-test over the
    validation examples does not find worse than the last one promoted (at most as many
    again as were promoted, best first)."""
    from scipy.stats import ttest_rel

    cut = curves.per_example(metric, keys[-1], fraction, cooldown)
    others = sorted(
        (k for k, s in state.items() if k not in keys and s["reached"] == rung),
        key=lambda k: -state[k]["metrics"][rung],
    )
    out = []
    for k in others:
        mine = curves.per_example(metric, k, fraction, cooldown)
        if mine == cut or ttest_rel(cut, mine, alternative="greater").pvalue >= alpha:
            out.append(k)
    return out[: len(keys)]


def strategies(n: int, cooldown: bool = False) -> dict[str, Callable[[Curves, int], Run]]:
    hb4 = [0.25, 0.5, 0.75, 1.0]  # the search presets' 2 validation points per epoch over 2 epochs
    fine = [k / 9 for k in range(1, 10)]
    tpe = lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True, constant_liar=True, n_startup_trials=4)  # noqa: E731

    def hyperband(rungs):
        return lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=len(rungs), reduction_factor=3)

    return {
        "full grid": lambda c, s: in_order(c, c.keys),
        # Training only the configuration that wins on this resample: the floor, 1/n.
        "oracle (the best only)": lambda c, s: in_order(c, [max(c.keys, key=lambda k: c.acc[k][-1])]),
        "random, no repeats": lambda c, s: in_order(c, random.Random(s).sample(c.keys, len(c.keys))),
        "TPE + Hyperband (accuracy), as before": lambda c, s: optuna_strategy(
            c, s, tpe, hyperband(hb4), "accuracy", hb4, n, False
        ),
        "TPE no repeats + Hyperband (label_logprob)": lambda c, s: optuna_strategy(
            c, s, tpe, hyperband(fine), "label_logprob", fine, n, True
        ),
        "brute force + SH pruner (label_logprob)": lambda c, s: optuna_strategy(
            c,
            s,
            lambda s2: optuna.samplers.BruteForceSampler(seed=s2),
            lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
            "label_logprob",
            fine,
            n,
            False,
        ),
        "GP, no repeats, no pruning": lambda c, s: optuna_strategy(
            c,
            s,
            lambda s2: optuna.samplers.GPSampler(seed=s2, n_startup_trials=4),
            optuna.pruners.NopPruner,
            "accuracy",
            [1.0],
            n,
            True,
        ),
        "successive halving (accuracy)": lambda c, s: halving_strategy(c, "accuracy"),
        "successive halving (label_logprob)": lambda c, s: halving_strategy(c, "label_logprob"),
        # The first rung where the early signal predicts the end (Spearman's rho >= 0.7
        # at 1/4 of training, printed above), eta 4: it costs more than 1/3 of the grid.
        "successive halving (label_logprob), rungs 1/4, 1, eta 4": lambda c, s: halving_strategy(
            c, "label_logprob", [0.25, 1.0], 4
        ),
        "successive halving (accuracy), rungs 1/4, 1, eta 4": lambda c, s: halving_strategy(
            c, "accuracy", [0.25, 1.0], 4
        ),
        **adaptive_strategies(),
        **(cooled_strategies() if cooldown else {}),
    }


ADAPTIVE = (
    ("accuracy", [0.25, 1.0], 4, "rungs 1/4, 1, eta 4"),
    ("label_logprob", [0.25, 1.0], 4, "rungs 1/4, 1, eta 4"),
    ("label_logprob", [1 / 3, 1.0], 4, "rungs 1/3, 1, eta 4"),
    ("accuracy", [0.5, 1.0], 4, "rungs 1/2, 1, eta 4"),
    ("label_logprob", [0.5, 1.0], 4, "rungs 1/2, 1, eta 4"),
    ("label_logprob", [0.25, 0.5, 1.0], 3, "rungs 1/4, 1/2, 1, eta 3"),
    ("label_logprob", [0.25, 0.5, 1.0], 2, "rungs 1/4, 1/2, 1, eta 2"),
)
"""Adaptive promotion (``study.promote = "adaptive"``) at the rungs it is measured on."""


def adaptive_strategies() -> dict[str, Callable[[Curves, int], Run]]:
    """This project's successive halving with adaptive promotion (``search._halving.Adaptive``,
    its defaults): the same schedule's actions, judged on the resampled examples."""
    from optuna_search.search.loop import Adaptive

    return {
        f"adaptive successive halving ({metric}), {name}": lambda c, s, m=metric, r=rungs, e=eta: halving_strategy(
            c, m, r, e, adaptive=Adaptive()
        )
        for metric, rungs, eta, name in ADAPTIVE
    }


NATIVE = ("TPE", "brute force", "GP")
"""Optuna's own strategies (its samplers and pruners): the ratios' reference."""
CANDIDATES = ("successive halving", "adaptive successive halving")
"""The strategies a search preset can run: the default is chosen among them."""


def cooled_strategies() -> dict[str, Callable[[Curves, int], Run]]:
    """Successive halving with each rung scored after its cool-down branch (charged), and
    with paired promotions."""
    out: dict[str, Callable[[Curves, int], Run]] = {}
    for metric in ("accuracy", "label_logprob"):
        for rungs, eta, name in (
            ([1 / 9, 1 / 3, 1.0], 3, "rungs 1/9, 1/3, 1, eta 3"),
            ([0.25, 1.0], 4, "rungs 1/4, 1, eta 4"),
            ([1 / 9, 1.0], 4, "rungs 1/9, 1, eta 4"),
            ([1 / 9, 1.0], 6, "rungs 1/9, 1, eta 6"),
        ):
            out[f"successive halving + cool-down ({metric}), {name}"] = lambda c, s, m=metric, r=rungs, e=eta: (
                halving_strategy(c, m, r, e, cooldown=True)
            )
            out[f"successive halving + cool-down, paired ({metric}), {name}"] = lambda c, s, m=metric, r=rungs, e=eta: (
                halving_strategy(c, m, r, e, cooldown=True, paired=0.05)
            )
    return out


def replay(data: dict[str, Any], seeds: int) -> dict[str, dict[str, Any]]:
    n = len(data["points"])
    rows = {}
    for name, strategy in strategies(n, Curves(data, 0).has_cooldown).items():
        within, fractions, gaps, spent, end_gaps, reached_all = 0, [], [], [], [], []
        for seed in range(seeds):
            curves = Curves(data, seed)
            run = strategy(curves, seed)
            reached = run.reached()
            reached_all.append(reached)
            if reached is not None and reached <= 1 / 3 + 1e-9:
                within += 1
            if reached is not None:
                fractions.append(reached)
            gaps.append(run.gap_at(1 / 3))
            spent.append(run.spent)
            end_gaps.append(run.gap_at(2.0))
        rows[name] = {
            "p": within / seeds,
            "fraction": statistics.median(fractions) if fractions else math.inf,
            "gap": statistics.median(gaps),
            "reached": len(fractions) / seeds,
            "spent": statistics.median(spent),
            "gap_end": statistics.median(end_gaps),
            "p90": compute_at(reached_all),
            "reached_all": reached_all,
        }
    return rows


SIGNAL_AT = (1 / 8, 1 / 4, 1 / 3, 1 / 2, 3 / 4)
"""The fractions of training at which ``signal_ranks`` asks where the winner stands."""


def signal_ranks(data: dict[str, Any], seeds: int) -> list[tuple[float, int, int, float]]:
    """Where a strategy that orders by one point of training would find the winner: per
    fraction, the rank (1 = first) by the label log-prob there of the first
    configuration within 1 point of the grid's best, median and P90 over the seeds'
    resamples; and the compute for P >= 0.9 of that order (every configuration trained
    to the point, then each to the end in its order, nothing cut): which points of
    training predict on this space, and what predicting costs."""
    curves = [Curves(data, s) for s in range(seeds)]
    out = []
    for f in SIGNAL_AT:
        ranks, reached = [], []
        for c in curves:
            good = {k for k in c.keys if c.acc[k][-1] >= c.best - 0.01}
            order = sorted(c.keys, key=lambda k: -c.at("label_logprob", k, f))
            ranks.append(1 + min(order.index(k) for k in good))
            run = Run(c)
            for k in c.keys:
                run.train(k, f)
            for k in order:
                run.train(k, 1.0, f)
            reached.append(run.reached())
        # The P90 rank is read as the compute is (compute_at: the value 90% of the seeds reach).
        out.append((f, statistics.median_low(ranks), int(compute_at(ranks)), compute_at(reached)))
    return out


HINDSIGHT = "one point's order, the point chosen in hindsight"
"""A reference, not a strategy anyone can run: of the orders by the label log-prob at one
point of training (``signal_ranks``), the cheapest on the space, known only after the grid."""


def ratio_interval(rows: dict[str, dict[str, Any]], name: str, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 90% interval of ``name``'s compute for P >= 0.9 over Optuna's best native
    strategy's on one space: the seeds resampled with replacement (bootstrap), both
    P90s recomputed on each draw. It says how much of a ratio is the seeds' noise."""
    natives = [r["reached_all"] for k, r in rows.items() if k.startswith(NATIVE)]
    mine = rows[name]["reached_all"]
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        idx = [rng.randrange(len(mine)) for _ in mine]
        native = min(compute_at([n[i] for i in idx]) for n in natives)
        own = compute_at([mine[i] for i in idx])
        out.append(own / native if math.isfinite(own) and native > 0 else math.inf)
    out.sort()
    return out[int(0.05 * draws)], out[int(0.95 * draws) - 1]


def spearman(data: dict[str, Any]) -> list[tuple[float, str, float]]:
    """Spearman's rho between each early point's metric and the final validation
    accuracy over the grid's points (full validation set): does early predict late?"""
    curves = Curves(data, seed=-1)
    curves.acc = {k: [_mean_acc(p["correct"]) for p in v["curve"]] for k, v in data["points"].items()}
    curves.lp = {k: [sum(p["logprob"]) / len(p["logprob"]) for p in v["curve"]] for k, v in data["points"].items()}
    finals = [curves.acc[k][-1] for k in curves.keys]
    out = []
    for f in (1 / 9, 1 / 4, 1 / 3, 1 / 2):
        for metric in ("accuracy", "label_logprob"):
            xs = [curves.at(metric, k, f) for k in curves.keys]
            out.append((f, metric, _rho(xs, finals)))
            if curves.has_cooldown:
                xs = [curves.cooled_metric(metric, k, f) for k in curves.keys]
                out.append((f, f"{metric} after the cool-down", _rho(xs, finals)))
    return out


def _rho(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic) if len(set(xs)) > 1 else float("nan")


def compare_winners(new: dict[str, Any], old: dict[str, Any]) -> str:
    """Whether the grid trained one way (``new``) picks the configuration the other
    (``old``) picks: each one's winner, its accuracy in both, the rank correlation."""

    def finals(data):
        return {k: _mean_acc(v["curve"][-1]["correct"]) for k, v in data["points"].items()}

    a, b = finals(new), finals(old)
    keys = [k for k in a if k in b]
    wa, wb = max(keys, key=a.__getitem__), max(keys, key=b.__getitem__)
    return (
        f"winner with {_schedule(new)}: {wa} ({100 * a[wa]:.1f}%; {100 * b[wa]:.1f}% with {_schedule(old)}); "
        f"winner with {_schedule(old)}: {wb} ({100 * b[wb]:.1f}%; {100 * a[wb]:.1f}% with {_schedule(new)}); "
        f"{'the same' if wa == wb else 'different'} winner; Spearman's rho of the final accuracies = "
        f"{_rho([a[k] for k in keys], [b[k] for k in keys]):+.2f}; best {100 * a[wa]:.1f}% vs {100 * b[wb]:.1f}%"
    )


def _schedule(data: dict[str, Any]) -> str:
    return f"{data.get('lr_scheduler', 'cosine')}{' + cool-down rungs' if data.get('cooldown') else ''}"


def rung_costs(data: dict[str, Any]) -> str | None:
    """What a rung costs: its validation pass, and its cool-down branch (training and
    validation), against the point's whole training."""
    points = [v for v in data["points"].values() if v.get("cooldown") and v.get("seconds")]
    if not points:
        return None
    evals = statistics.mean(v["eval_s"] for v in points)
    branch = statistics.mean(v["branch_s"] / len(v["cooldown"]) for v in points)
    whole = statistics.mean(v["seconds"] for v in points)
    cost = statistics.mean(c["cost"] for v in points for c in v["cooldown"])
    rungs = ", ".join(f"{c['fraction']:.2f}" for c in points[0]["cooldown"])
    return (
        f"a validation pass {evals:.1f} s; a cool-down branch {branch:.1f} s with its validation "
        f"({cost:.3f} of a full training's steps on average over the rungs "
        f"{rungs}); a point's whole grid run "
        f"{whole:.0f} s"
    )


# -- 3. live ---------------------------------------------------------------------------------
def live(
    data: dict[str, Any],
    preset: str,
    sets: list[str],
    rungs: list[float],
    eta: int,
    metric: str,
    promote: str = "fixed",
) -> tuple[float, float, float]:
    """Successive halving as a real study (the CLI); returns its compute fraction, its
    best validation accuracy and the grid's."""
    space = data["space"]
    work = Path(tempfile.mkdtemp(prefix="search-efficiency-live-"))
    grid = "{" + ", ".join(f"{k}={v}" for k, v in space.items()) + "}"
    cmd = [
        sys.executable,
        "-m",
        "optuna_search.search",
        "-q",
        "run",
        "--preset",
        preset,
        "--study-name",
        "live",
        "--storage",
        f"sqlite:///{work / 'live.db'}",
        *[
            a
            for s in [
                *sets,
                f"study.grid={grid}",
                "study.schedule='successive_halving'",
                f"study.rungs={rungs}",
                f"study.eta={eta}",
                f"study.promote='{promote}'",
                "eval.method='score'",
                f"study.prune_on='{metric}'",
                "study.pruner='none'",
                "study.sampler='grid'",
                "study.search_space={}",
                "study.n_trials=0",
                "eval.objective_split='validation'",
            ]
            for a in ("--set", s)
        ],
    ]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    study = optuna.load_study(study_name="live", storage=f"sqlite:///{work / 'live.db'}")
    steps = sum(t.user_attrs.get("optimizer_steps", 0) for t in study.trials)
    total = sum(p["steps"] for p in data["points"].values())
    best = max(t.user_attrs["validation_overall_accuracy"] for t in study.trials if t.state.name == "COMPLETE")
    grid_best = max(_mean_acc(p["curve"][-1]["correct"]) for p in data["points"].values())
    return steps / total, best, grid_best


DEFAULT_STRATEGY = "adaptive successive halving (label_logprob), rungs 1/4, 1/2, 1, eta 2"
"""What the search presets run (``demo-search``, ``kaggle-t4-search``): chosen by its
worst ratio over the spaces (``report_worst_case``)."""
DEFAULT_SETTINGS = ("label_logprob", [0.25, 0.5, 1.0], 2, "adaptive")
"""The default as the live run sets it: study.prune_on, rungs, eta, promote."""

_GAME_BUGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "game-bugs"
REAL_SETS = [
    "data.train_samples=96",
    "model.max_length=128",
    "train.gradient_accumulation=1",
    "eval.validation_samples=30",
    "study.sampler='grid'",
    "study.grid={lora_r=[4]}",
    # Absolute data paths: the live study runs in a folder of its own.
    f'data.train="{_GAME_BUGS / "train.jsonl"}"',
    f'data.validation="{_GAME_BUGS / "val.jsonl"}"',
    f'data.test="{_GAME_BUGS / "val.jsonl"}"',
]
SPACES: dict[str, tuple[dict[str, list], str, list[str], int]] = {
    # name: (grid, preset, --set overrides, validation points over training)
    "demo": (DEMO, "demo-search", ["train.epochs=2", "data.train_samples=600", "eval.validation_samples=100"], POINTS),
    # A space nobody tuned the strategies on: the schedule's shape, dropout and the rate.
    "schedule": (
        {
            "learning_rate": [2e-3, 1e-2],
            "lr_scheduler": ["cosine", "linear", "constant_with_warmup"],
            "lora_dropout": [0.0, 0.1],
        },
        "demo-search",
        ["train.epochs=2", "data.train_samples=400", "eval.validation_samples=100", "train.warmup_ratio=0.1"],
        POINTS,
    ),
    # The 3 x 3 kind of space, written here: ranks and rates nobody tuned on, another
    # training seed and subset.
    "ranks-rates": (
        {"lora_r": [4, 8, 16], "learning_rate": [1e-3, 3e-3, 1e-2]},
        "demo-search",
        ["train.epochs=2", "data.train_samples=500", "train.seed=7", "eval.validation_samples=100"],
        POINTS,
    ),
    # Other ranks and rates, another seed and subset again.
    "ranks-rates-b": (
        {"lora_r": [2, 12, 24], "learning_rate": [1.5e-3, 4e-3, 7e-3]},
        "demo-search",
        ["train.epochs=2", "data.train_samples=450", "train.seed=11", "eval.validation_samples=100"],
        POINTS,
    ),
    # Other hyperparameters: the adapter's regularisation and scaling against the rate.
    "regularization": (
        {"use_rslora": [False, True], "lora_dropout": [0.0, 0.2], "learning_rate": [3e-3, 8e-3]},
        "demo-search",
        ["train.epochs=2", "data.train_samples=400", "train.seed=3", "eval.validation_samples=100"],
        POINTS,
    ),
    # Another data size: 160 training examples over 3 epochs, the batch against rank and rate.
    "small-data": (
        {"batch_size": [4, 8], "lora_r": [4, 16], "learning_rate": [2e-3, 5e-3, 1e-2]},
        "demo-search",
        ["train.epochs=3", "data.train_samples=160", "train.seed=5", "eval.validation_samples=100"],
        POINTS,
    ),
    # SmolLM2-135M on the real reports, on both schedules (about 20 minutes each on 2 cores).
    "real": (REAL, "cpu-real", REAL_SETS, REAL_POINTS),
    "real-wsd": (
        REAL,
        "cpu-real",
        [*REAL_SETS, "train.lr_scheduler='warmup_stable_decay'", "train.decay_ratio=0.2"],
        REAL_POINTS,
    ),
    "smoke": (
        {"lora_r": [4, 8]},
        "demo-search",
        ["train.epochs=1", "data.train_samples=64", "eval.validation_samples=10", "study.cooldown=true"],
        REAL_POINTS,
    ),
}


def parse_space(text: str, preset: str) -> tuple[dict[str, list], str, list[str], int]:
    """A named space, or a grid written as ``study.grid`` is (``{lora_r=[4,16], ...}``),
    checked by the project's own configuration (a key outside the hyperparameter table,
    or a value it refuses, is one clear error)."""
    if text in SPACES:
        return SPACES[text]
    from optuna_search.search import load_config

    config = load_config(preset=preset, sets=[f"study.grid={text}", "study.sampler='grid'"])
    if len(config.grid_points()) < 2:
        from optuna_search.core import UserError

        raise UserError(f"--space {text} has {len(config.grid_points())} point: a search needs at least two")
    return dict(config.study.grid), preset, [], POINTS


def curves_path(space: dict[str, list], preset: str, sets: list[str], points: int) -> Path:
    """The grid's curves are cached per space, preset, overrides, validation points and
    the resolved schedule (learning-rate schedule, rung cool-downs: a preset's change is a
    new grid) under ``$OPTUNA_SEARCH_CACHE/benchmarks``: a second run replays without
    training."""
    import hashlib

    from optuna_search.objectives import cache_root
    from optuna_search.search import load_config

    config = load_config(preset=preset, sets=sets)
    schedule = [config.train.lr_scheduler, config.study.cooldown, config.train.decay_ratio]
    key = json.dumps([space, preset, sets, points, schedule], sort_keys=True, default=str)
    return cache_root() / "benchmarks" / f"curves-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def compute_at(reached: list[float | None], p: float = 0.9) -> float:
    """The compute (fraction of the grid's) by which a strategy is within 1 point of the
    grid's best in at least ``p`` of the seeds (inf when it never gets there that often)."""
    done = sorted(math.inf if r is None else r for r in reached)
    return done[max(0, math.ceil(p * len(done)) - 1)]


def report_space(name: str, data: dict[str, Any], seeds: int, trained_s: float) -> dict[str, dict[str, Any]]:
    print(
        f"\n== space {name}: {json.dumps(data['space'])} ({data['preset']}, {' '.join(data['sets']) or 'no overrides'})"
    )
    print(f"grid: {len(data['points'])} points ({trained_s:.0f} s to train or read); replaying over {seeds} seeds")
    print("early signal (Spearman's rho with the final validation accuracy, over the grid's points):")
    for f, metric, rho in spearman(data):
        shown = f"{rho:+.2f}" if math.isfinite(rho) else "n/a (every point the same there)"
        print(f"  at {100 * f:.0f}% of training, {metric}: rho = {shown}")
    print("where the winner stands when ordered by the label log-prob at a point of training (rank of the first")
    print("configuration within 1 pt of the grid's best: median, P90 over the seeds), and that order's compute")
    print("for P >= 0.9 (all trained to the point, then each to the end in its order):")
    signal = signal_ranks(data, seeds)
    for f, med, p90, compute in signal:
        print(f"  at {100 * f:.0f}%: rank {med}, {p90}; compute {compute:.2f}")
    costs = rung_costs(data)
    if costs:
        print(f"rung costs: {costs}")
    rows = replay(data, seeds)
    width = max(map(len, rows))
    print(
        f"{'strategy':<{width}}  P(within 1 pt at <= 1/3)  compute for P >= 0.9  median gap at 1/3  "
        "compute spent  gap at its end"
    )
    for strategy, r in rows.items():
        print(
            f"{strategy:<{width}}  {r['p']:>24.2f}  {r['p90']:>20.2f}  {100 * r['gap']:>15.1f} pt  "
            f"{r['spent']:>13.2f}  {100 * r['gap_end']:>11.1f} pt"
        )
    native = min(r["p90"] for k, r in rows.items() if k.startswith(NATIVE))
    halving = {k: r for k, r in rows.items() if k.startswith(CANDIDATES)}
    cheapest = min(halving, key=lambda k: halving[k]["p90"])

    def at90(x: float) -> str:
        return "never at P >= 0.9" if math.isinf(x) else f"{x:.2f} of the grid's compute"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x less" if math.isfinite(a) and math.isfinite(b) else "no ratio"

    print(
        f"for P >= 0.9: the default strategy {at90(rows[DEFAULT_STRATEGY]['p90'])}; the cheapest successive "
        f"halving ({cheapest}) {at90(halving[cheapest]['p90'])}, {ratio(native, halving[cheapest]['p90'])} than "
        f"Optuna's best native strategy ({at90(native)}); the oracle {at90(rows['oracle (the best only)']['p90'])}"
    )
    f, _, _, compute = min(signal, key=lambda x: x[3])
    rows[HINDSIGHT] = {"p90": compute, "fraction": f}  # for the ratios across the spaces
    return rows


def main() -> None:
    from optuna_search.core import UserError

    try:
        _main()
    except UserError as e:  # a space or an override that cannot be: one line, as the CLI says it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--space",
        action="append",
        metavar="NAME|GRID",
        help=f"a named space ({', '.join(n for n in SPACES if n != 'smoke')}) or a grid written as "
        "study.grid is, e.g. '{lora_r=[4,16], learning_rate=[1e-3,3e-3]}'; repeat for several "
        "(default: demo)",
    )
    ap.add_argument(
        "--preset", default="demo-search", help="the preset a written grid trains with (default demo-search)"
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every space's training, as `run --set` takes it",
    )
    ap.add_argument(
        "--compare-set",
        dest="compare_sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also train (or read) each space's grid with these overrides and say whether its winner is the same, "
        "e.g. --compare-set train.lr_scheduler=\"'cosine'\" --compare-set study.cooldown=false",
    )
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--curves", type=Path, help="the grid's curves (JSON) of a single space; default: cached per space")
    ap.add_argument("--real", action="store_true", help="the same as --space real")
    ap.add_argument("--no-live", action="store_true", help="skip the live run")
    ap.add_argument("--smoke", action="store_true", help="2 points, 9 validation points, 5 seeds, no live run: seconds")
    ap.add_argument(
        "--live-only",
        metavar="METRIC:RUNGS:ETA",
        help="only the live run of this successive halving, e.g. accuracy:0.25,1.0:4",
    )
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    names = ["smoke"] if args.smoke else (args.space or (["real"] if args.real else ["demo"]))
    if args.smoke:
        args.seeds, args.no_live = 5, True
    if args.curves and len(names) > 1:
        sys.exit("--curves names the curves of one space; leave it out with several --space (they are cached)")
    per_space: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        space, preset, sets, points = parse_space(name, args.preset)
        sets = [*sets, *args.sets, "train.checkpoint_steps=1000", "train.gradient_checkpointing=false"]
        t0 = time.monotonic()
        cache = None if args.smoke else curves_path(space, preset, sets, points)
        path = args.curves or cache or Path(tempfile.mkdtemp()) / "curves.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = grid_curves(space, preset, sets, path, points)
        if args.live_only:
            metric, rungs, eta = args.live_only.split(":")
            fraction, best, grid_best = live(data, preset, sets, [float(x) for x in rungs.split(",")], int(eta), metric)
            print(
                f"live successive halving ({metric}), rungs {rungs}, eta {eta}: {fraction:.2f} of the grid's "
                f"optimizer steps, best validation {100 * best:.1f}% vs the grid's {100 * grid_best:.1f}% "
                f"({round(100 * (best - grid_best), 1) + 0.0:+.1f} points)"
            )
            return
        rows = report_space(name, data, args.seeds, time.monotonic() - t0)
        per_space[name] = rows
        if args.compare_sets:
            other_sets = [*sets[:-2], *args.compare_sets, *sets[-2:]]
            other = curves_path(space, preset, other_sets, points)
            other.parent.mkdir(parents=True, exist_ok=True)
            print(f"against the grid with {' '.join(args.compare_sets)}: ", end="", flush=True)
            print(compare_winners(data, grid_curves(space, preset, other_sets, other, points)))
        if not args.no_live:
            metric, rungs, eta, promote = DEFAULT_SETTINGS
            fraction, best, grid_best = live(data, preset, sets, rungs, eta, metric, promote)
            print(
                f"live {DEFAULT_STRATEGY}: {fraction:.2f} of the grid's optimizer steps, best validation "
                f"{100 * best:.1f}% vs the grid's {100 * grid_best:.1f}% "
                f"({round(100 * (best - grid_best), 1) + 0.0:+.1f} points)"
            )
    report_worst_case(per_space)


def ratios(per_space: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per candidate strategy and space: its compute for P >= 0.9 over Optuna's best
    native strategy's on that space (inf where it never gets there that often)."""
    out: dict[str, dict[str, float]] = {}
    for space, rows in per_space.items():
        for k in rows:
            if k.startswith(CANDIDATES):
                out.setdefault(k, {})[space] = _over_native(rows, k)
    return out


def _over_native(rows: dict[str, dict[str, Any]], name: str) -> float:
    """``name``'s compute for P >= 0.9 over Optuna's best native strategy's on one space."""
    native = min(r["p90"] for k, r in rows.items() if k.startswith(NATIVE))
    mine = rows[name]["p90"]
    return mine / native if math.isfinite(mine) and native > 0 else math.inf


def report_worst_case(per_space: dict[str, dict[str, dict[str, Any]]]) -> None:
    """The candidates' ratios per space, the one a worst case picks, and last the
    default's worst ratio over the spaces."""
    table = ratios(per_space)
    spaces = list(per_space)
    width = max(map(len, table))

    def show(x: float) -> str:
        return f"{x:.2f}" if math.isfinite(x) else "inf"

    print(f"\n== compute for P >= 0.9 over Optuna's best native strategy's, per space ({', '.join(spaces)})")
    print(f"{'strategy':<{width}}  " + "  ".join(f"{s[:12]:>12}" for s in spaces) + "         worst")
    for k, by in table.items():
        print(f"{k:<{width}}  " + "  ".join(f"{show(by[s]):>12}" for s in spaces) + f"  {show(max(by.values())):>12}")
    # Minimax, then the next-worst ratio, and so on (the ratios sorted worst first).
    chosen = min(table, key=lambda k: sorted(table[k].values(), reverse=True))
    print(f"chosen by its worst case: {chosen} (worst {show(max(table[chosen].values()))})")
    mine = table[DEFAULT_STRATEGY]
    print(
        f"{HINDSIGHT} (a reference: the best order by the label log-prob at one point of training, "
        "known only after the grid), over Optuna's best native strategy: "
        + "; ".join(
            f"{s} {show(_over_native(per_space[s], HINDSIGHT))} (at {100 * per_space[s][HINDSIGHT]['fraction']:.0f}%)"
            for s in spaces
        )
    )
    print(
        "the default's ratio per space, with a 90% interval over the seeds (bootstrap: how much of it is noise): "
        + "; ".join(
            f"{s} {show(mine[s])} ({show(lo)} to {show(hi)})"
            for s in spaces
            for lo, hi in [ratio_interval(per_space[s], DEFAULT_STRATEGY)]
        )
    )
    space = max(mine, key=lambda s: mine[s])
    print(
        f"default strategy ({DEFAULT_STRATEGY}): worst compute ratio to Optuna's best native strategy over "
        f"{len(spaces)} space{'s' if len(spaces) > 1 else ''} = {show(mine[space])} ({space})"
    )


if __name__ == "__main__":
    main()
