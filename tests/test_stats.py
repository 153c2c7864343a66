"""The study's statistics against hand-worked numbers: paired t intervals, verdicts, standard
errors and the convergence criterion on synthetic loss curves."""
import math

import numpy as np
import pytest

from shrinkteanet.study import stats


def test_paired_difference_by_hand():
    # d = (0.02, 0.03, 0.04): mean 0.03, sd 0.01, t_{0.975, 2} = 4.302653, half = 4.302653 * 0.01 / sqrt(3)
    res = stats.paired_difference([0.82, 0.83, 0.84], [0.80, 0.80, 0.80])
    half = 4.302652729749464 * 0.01 / math.sqrt(3)
    assert res["n"] == 3
    assert res["mean_diff"] == pytest.approx(0.03)
    assert res["sd"] == pytest.approx(0.01)
    assert res["ci95"] == pytest.approx([0.03 - half, 0.03 + half])
    assert stats.verdict(res) == "better"


def test_pairing_is_by_position_not_by_sorting():
    # unpaired these means differ by 0; paired, each treated run is 1 point above its control
    treated, control = [0.71, 0.91, 0.51], [0.70, 0.90, 0.50]
    res = stats.paired_difference(treated, control)
    assert res["mean_diff"] == pytest.approx(0.01) and res["sd"] == pytest.approx(0.0, abs=1e-12)
    assert res["ci95"] == pytest.approx([0.01, 0.01])


def test_verdicts_and_missing_values():
    worse = stats.paired_difference([0.70, 0.69, 0.71], [0.80, 0.80, 0.81])
    assert worse["ci95"][1] < 0 and stats.verdict(worse) == "worse"
    noise = stats.paired_difference([0.80, 0.70, 0.85], [0.75, 0.76, 0.79])
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and stats.verdict(noise) == "within noise"
    one = stats.paired_difference([0.9], [0.8])
    assert one == {"mean_diff": pytest.approx(0.1), "sd": None, "ci95": None, "n": 1}
    assert stats.verdict(one) == "one seed"
    # a pair with a missing value is dropped, not counted as zero
    assert stats.paired_difference([0.9, None, 0.7], [0.8, 0.8, None])["n"] == 1
    assert stats.paired_difference([], [])["n"] == 0


def test_mean_std_and_binomial_se():
    assert stats.mean_std([0.6, 0.7]) == (pytest.approx(0.65), pytest.approx(0.0707106781))
    assert stats.mean_std([0.5]) == (0.5, None) and stats.mean_std([None]) == (None, None)
    # 3,000 pairs at 90%: sqrt(0.09 / 3000) = 0.5477 points
    assert stats.binomial_se(0.9, 3000) == pytest.approx(math.sqrt(0.09 / 3000))
    assert stats.binomial_se(0.5, 0) is None


def _curve(losses, lrs):
    return [{"step": 10 * (i + 1), "lr": lr, "softmax": v} for i, (v, lr) in enumerate(zip(losses, lrs))]


def test_plateau_flat_final_phase():
    rng = np.random.RandomState(0)
    lrs = [0.1] * 20 + [0.01] * 10 + [0.001] * 16
    loss = list(np.linspace(10, 3, 20)) + list(np.linspace(3, 2, 10)) + list(2.0 + 0.01 * rng.randn(16))
    res = stats.plateau(_curve(loss, lrs))
    assert res["final_lr"] == 0.001 and res["points_at_final_lr"] == 16 and res["window"] == 4
    assert res["plateaued"] and abs(res["rel_drop"]) < 0.02


def test_plateau_still_falling():
    # falling 5% per point at the final lr: the last window is far below the one before
    lrs = [0.1] * 10 + [0.001] * 12
    loss = list(np.linspace(10, 5, 10)) + [5 * 0.95 ** k for k in range(12)]
    res = stats.plateau(_curve(loss, lrs))
    a, b = np.mean(loss[-6:-3]), np.mean(loss[-3:])
    assert res["window"] == 3 and res["rel_drop"] == pytest.approx((a - b) / a)
    assert not res["plateaued"]


def test_plateau_sums_the_parts_and_needs_four_points():
    curve = [{"step": s, "lr": 0.01, "softmax": 1.0, "angular_4": 0.5} for s in range(8)]
    curve[-1]["angular_4"] = 0.1  # the objective is the sum of the parts: 1.5 -> 1.1 at the end
    res = stats.plateau(curve)
    assert res["rel_drop"] == pytest.approx((1.5 - 1.3) / 1.5) and not res["plateaued"]
    short = stats.plateau(curve[:3])
    assert not short["plateaued"] and "need 4" in short["reason"]
    assert not stats.plateau([])["plateaued"]
