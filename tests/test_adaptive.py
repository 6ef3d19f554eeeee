"""Adaptive promotion in successive halving (``study.promote = "adaptive"``): the study
judges its rung by what the configurations that went on did at the next rung, and
decides to cut, promote more, or let the rest go on (to the end, with two rungs).

The curves here are synthetic and their early signal is known by construction: the rung's
order holds (strong), says nothing (none), is reversed (misleading) or holds weakly. The
tests assert the decisions, never a trained number."""

from __future__ import annotations

import logging

import pytest
from optuna.trial import TrialState
from test_scheduler import _real_study, _reload

from optuna_search.core import TrialRecord
from optuna_search.search import load_config
from optuna_search.search.loop import Outcome, Scheduler, TrialOutcome
from optuna_search.search.loop import _halving as halving
from optuna_search.search.loop._schedule import Done, Promote, PruneRest, Status, Train

N = 12
RUNGS = [0.25, 1.0]
ETA = 4  # the first step: the best 3 and the rung's last


def _examples(value: float) -> list[float]:
    """100 validation examples, ``value`` of them right, nested (a higher value is right
    wherever a lower one is): the paired test sees exactly the difference."""
    right = round(100 * value)
    return [1.0] * right + [0.0] * (100 - right)


# Configuration i scores 0.30 + 0.03 i at the rung (k11 best, k0 last); the end by signal:
AT_RUNG = {f"k{i}": 0.30 + 0.03 * i for i in range(N)}
AT_END = {
    # The rung's order holds, with clear gaps.
    "strong": {f"k{i}": 0.30 + 0.04 * i for i in range(N)},
    # Everything ends the same: the rung told nothing.
    "none": {f"k{i}": 0.60 for i in range(N)},
    # The order reverses: the rung's last ends best.
    "misleading": {f"k{i}": 0.80 - 0.04 * i for i in range(N)},
    # The top three end in another order (rho 0.4 with the probe last): the order holds weakly.
    "weak": {**{f"k{i}": 0.30 + 0.04 * i for i in range(N)}, "k11": 0.70, "k10": 0.66, "k9": 0.74},
}


ADAPTIVE = halving.Adaptive()


def replay(signal: str, adaptive: halving.Adaptive | None = ADAPTIVE):
    """Run the schedule's actions on the synthetic curves, as the scheduler applies them:
    the order configurations trained to each rung, the steps' evidence, who was pruned."""
    state = {k: {"state": Status.PENDING, "reached": -1, "metrics": {}, "examples": {}} for k in AT_RUNG}
    promoted: dict[int, list[str]] = {}
    open_rungs: set[int] = set()
    trained: list[tuple[str, int]] = []
    steps: list[dict] = []
    pruned: list[str] = []
    for _ in range(200):
        configs = [
            halving.Config(k, v["state"], v["reached"], dict(v["metrics"]), i, dict(v["examples"]))
            for i, (k, v) in enumerate(state.items())
        ]
        a = halving.next_action(
            configs,
            promoted,
            n_configs=N,
            n_rungs=len(RUNGS),
            eta=ETA,
            adaptive=adaptive,
            open_rungs=frozenset(open_rungs),
        )
        if isinstance(a, Train):
            value = AT_RUNG[a.key] if a.rung == 0 else AT_END[signal][a.key]
            s = state[a.key]
            s["reached"], s["metrics"][a.rung], s["examples"][a.rung] = a.rung, value, _examples(value)
            s["state"] = Status.COMPLETE if a.rung == len(RUNGS) - 1 else Status.PAUSED
            trained.append((a.key, a.rung))
        elif isinstance(a, Promote):
            promoted[a.rung] = list(a.keys)
            (open_rungs.discard if a.final else open_rungs.add)(a.rung)
            if a.evidence is not None:
                steps.append(a.evidence)
        elif isinstance(a, PruneRest):
            for k in a.keys:
                state[k]["state"] = Status.PRUNED
            pruned += a.keys
        else:
            assert isinstance(a, Done)
            return [k for k, r in trained if r == 1], steps, pruned
    raise AssertionError("the schedule did not finish")


def test_a_rung_whose_order_holds_is_cut_after_its_first_step():
    to_end, steps, pruned = replay("strong")
    first, judged = steps
    assert first["decision"] == "first step" and first["promoted"] == ["k11", "k10", "k9", "k0"]
    assert first["probe"] == "k0"
    assert judged["signal"] == "strong" and judged["decision"] == "cut"
    assert judged["rho"] == 1.0 and judged["best"] == "k11" and judged["probe"] == "k0"
    assert to_end == ["k11", "k10", "k9", "k0"]  # the best first, the probe last
    assert sorted(pruned) == sorted(f"k{i}" for i in range(1, 9))


def test_a_rung_that_tells_nothing_trains_the_rest_to_the_end_in_its_order():
    to_end, steps, pruned = replay("none")
    judged = steps[1]
    assert judged["signal"] == "none" and judged["decision"] == "the rest go on"
    assert "k0" in judged["competitive"]  # the probe: not worse than the best on the same examples
    assert to_end == ["k11", "k10", "k9", "k0", *(f"k{i}" for i in range(8, 0, -1))]
    assert pruned == []


def test_a_misleading_rung_trains_the_rest_to_the_end_its_last_first():
    to_end, steps, pruned = replay("misleading")
    judged = steps[1]
    assert judged["signal"] == "misleading" and judged["best"] == "k0" and judged["rho"] < 0
    assert judged["decision"] == "the rest go on"
    assert to_end == ["k11", "k10", "k9", "k0", *(f"k{i}" for i in range(1, 9))]
    assert pruned == []


def test_a_weak_order_promotes_the_next_and_judges_again():
    to_end, steps, pruned = replay("weak")
    assert [(s["signal"], s["decision"]) for s in steps[1:]] == [("weak", "promote more"), ("strong", "cut")]
    assert steps[1]["rho"] == pytest.approx(0.4)
    assert steps[1]["promoted"] == ["k8", "k7", "k6"]
    assert to_end == ["k11", "k10", "k9", "k0", "k8", "k7", "k6"]
    assert sorted(pruned) == sorted(f"k{i}" for i in range(1, 6))


def test_without_adaptive_promotion_the_best_quarter_goes_on_whatever_the_evidence():
    for signal in AT_END:
        to_end, steps, pruned = replay(signal, adaptive=None)
        assert to_end == ["k11", "k10", "k9"] and steps == [] and len(pruned) == 9


# -- the study: steps stored, logged, reported, resumed ---------------------------------------
class _Curves:
    """A fake runner: the rung's metric from ``AT_RUNG``, the end's from ``AT_END[signal]``,
    with per-example scores; ``interrupt_at``: the n-th run is interrupted (Ctrl-C)."""

    def __init__(self, signal: str, interrupt_at: int | None = None) -> None:
        self.signal, self.interrupt_at, self.ran = signal, interrupt_at, []

    def describe(self, job):
        return TrialRecord(attempts=job.attempts)

    def run(self, job):
        key, rung = f"k{job.params['lora_r'] - 1}", job.rung
        self.ran.append((key, rung))
        if self.interrupt_at == len(self.ran):
            return TrialOutcome(Outcome.INTERRUPTED, TrialRecord(), stop=KeyboardInterrupt())
        value = AT_RUNG[key] if rung == 0 else AT_END[self.signal][key]
        values = {"0": AT_RUNG[key], **({"1": value} if rung == 1 else {})}  # the curve so far, as the runner's
        record = TrialRecord(rung=rung, rung_values=values, rung_examples={str(rung): _examples(value)})
        if rung == 0:
            return TrialOutcome(Outcome.PAUSED, record)
        return TrialOutcome(Outcome.COMPLETE, record, values=[value])


def _config():
    return load_config(
        preset="demo",
        sets=[
            f"study.grid={{lora_r={list(range(1, N + 1))}}}",
            "study.schedule='successive_halving'",
            f"study.rungs={RUNGS}",
            f"study.eta={ETA}",
            "study.promote='adaptive'",
        ],
    )


def test_the_study_stores_logs_and_reports_what_it_learned_and_decided(tmp_path, caplog):
    from optuna_search.dashboards import collect_report, render_markdown

    config = _config()
    study = _real_study(tmp_path, config)
    with caplog.at_level(logging.INFO, logger="optuna_search"):
        Scheduler(study, config, _Curves("strong")).run()
    meta = study.user_attrs["halving"]
    assert meta["open"] == []
    assert [s["decision"] for s in meta["decisions"]["0"]] == ["first step", "cut"]
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE"] * 4 + ["PRUNED"] * 8
    # The evidence of both rungs stays with a finished configuration (the cut's paired
    # test reads its first rung's examples after it has finished).
    assert all(
        set(t.user_attrs["rung_examples"]) == {"0", "1"} for t in study.get_trials() if t.state.name == "COMPLETE"
    )
    log = caplog.text
    assert "rung 1 (25% of training): first step: the best by the rung go on (lora_r=12, lora_r=11, lora_r=10)" in log
    assert "and the rung's last one (lora_r=1) to test its order" in log
    assert "Spearman's rho +1.00 with the rung's order" in log and "strong signal (its order held); decided: cut" in log
    md = render_markdown(collect_report(study, config))
    assert "What the study learned at this rung, step by step:" in md
    assert "decided: cut" in md


def test_an_adaptive_study_interrupted_between_its_steps_resumes_and_decides_the_same(tmp_path):
    config = _config()
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    whole = _Curves("weak")
    Scheduler(_real_study(tmp_path / "whole", config), config, whole).run()

    first = _Curves("weak", interrupt_at=N + 5)  # during the second step's promotions
    with pytest.raises(KeyboardInterrupt):
        Scheduler(_real_study(tmp_path / "split", config), config, first).run()
    study = _reload(tmp_path / "split", config)
    assert study.user_attrs["halving"]["open"] == [0]  # the rung's promotions are not final yet
    assert not [t for t in study.get_trials() if t.state == TrialState.FAIL]
    second = _Curves("weak")
    Scheduler(study, config, second).run()
    assert first.ran[:-1] + second.ran == whole.ran  # nothing trained twice, nothing skipped
    decided = _reload(tmp_path / "split", config).user_attrs["halving"]["decisions"]["0"]
    assert [s["decision"] for s in decided] == ["first step", "promote more", "cut"]
