import pytest

from optuna_search.objectives._stats import INVALID, field_metrics, mcnemar_exact, wilson_interval


def test_wilson_matches_hand_computed_values():
    # 50/100: centre 0.5, half-width z*sqrt(p(1-p)/n + z^2/4n^2)/(1 + z^2/n) = 0.096168
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.403832, abs=1e-5) and hi == pytest.approx(0.596168, abs=1e-5)
    # 0/10: the interval does not collapse to [0, 0] like the normal approximation.
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-9) and hi == pytest.approx(0.277533, abs=1e-5)
    # 64/100, the hand-run study's headline: centre 0.634825, half-width 0.092466.
    lo, hi = wilson_interval(64, 100)
    assert lo == pytest.approx(0.542359, abs=1e-5) and hi == pytest.approx(0.727291, abs=1e-5)


def test_exact_mcnemar_matches_binomial_by_hand():
    # 8 discordant pairs all favouring A: p = 2 * 0.5^8
    a = [True] * 8 + [True] * 50 + [False] * 42
    b = [False] * 8 + [True] * 50 + [False] * 42
    m = mcnemar_exact(a, b)
    assert (m.only_a, m.only_b) == (8, 0) and m.p_value == pytest.approx(0.0078125) and m.significant
    # 2 vs 8: p = 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10 = 112/1024
    a = [True] * 2 + [False] * 8 + [True] * 90
    b = [False] * 2 + [True] * 8 + [True] * 90
    m = mcnemar_exact(a, b)
    assert m.p_value == pytest.approx(112 / 1024) and not m.significant
    # Identical predictions: no evidence of any difference.
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_field_metrics_counts_invalid_predictions_as_wrong():
    gold = ["low", "high", "high", "low"]
    pred = ["low", "high", None, "banana"]
    m = field_metrics(gold, pred, ["high", "low"])
    assert m["accuracy"] == 0.5
    assert m["confusion"]["labels"] == ["high", "low", INVALID]
    assert m["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 1]]
    # per-class F1: high 2/3, low 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
