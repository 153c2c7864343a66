"""Statistics of the study: summaries over seeds, paired differences with t intervals,
verdicts, standard errors of the protocols and the convergence criterion of a loss curve.

Pure functions over plain numbers (no MXNet), imported by ``study`` and ``report_table``.
"""
import math

import numpy as np

#: the convergence criterion: at the final learning rate, the mean loss of the last window
#: may be at most this fraction below that of the window before it
PLATEAU_TOL = 0.02


def mean_std(values):
    """``(mean, sample std)`` of the non-None values; std is None for fewer than two, both None for none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def paired_difference(treated, control, confidence=0.95):
    """Paired comparison over seeds: ``d_k = treated_k - control_k`` (same seed, data order and
    schedule), mean, sample std and the two-sided t interval ``mean +- t_{n-1} * sd / sqrt(n)``.

    Returns ``{mean_diff, sd, ci95: [low, high], n}``; ``ci95`` is None for n < 2.  Pairs where
    either value is None are dropped."""
    from scipy import stats

    pairs = [(float(a), float(b)) for a, b in zip(treated, control) if a is not None and b is not None]
    n = len(pairs)
    if n == 0:
        return {"mean_diff": None, "sd": None, "ci95": None, "n": 0}
    d = np.array([a - b for a, b in pairs])
    mean = float(d.mean())
    if n < 2:
        return {"mean_diff": mean, "sd": None, "ci95": None, "n": n}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean_diff": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": n}


def verdict(paired):
    """``better`` when the 95% interval lies above zero, ``worse`` below, else ``within noise``;
    ``one seed`` when there is no interval (n < 2)."""
    ci = paired.get("ci95")
    if not ci:
        return "one seed"
    if ci[0] > 0:
        return "better"
    if ci[1] < 0:
        return "worse"
    return "within noise"


def binomial_se(p, n):
    """Standard error ``sqrt(p (1 - p) / n)`` of a rate ``p`` measured on ``n`` independent trials."""
    if p is None or not n:
        return None
    return math.sqrt(max(float(p) * (1.0 - float(p)), 0.0) / float(n))


def curve_total(point):
    """The objective at one loss-curve point: the sum of its loss parts (every key but step and lr)."""
    return float(sum(v for k, v in point.items() if k not in ("step", "lr")))


def plateau(curve, tol=PLATEAU_TOL):
    """The convergence criterion of the study on a loss curve (``train`` summary ``curve``: points
    ``{step, lr, part: mean over the last `frequent` steps}``).

    Take the points at the final (smallest) learning rate; split the last half of them into two
    consecutive windows A (earlier) and B (later) of equal length; the run has plateaued when the
    objective fell by less than ``tol`` from A to B: ``(mean A - mean B) / mean A < tol``.  Needs
    at least 4 points at the final lr; fewer -> ``plateaued`` False with a reason.

    Returns ``{plateaued, rel_drop, final_lr, points_at_final_lr, window}``."""
    if not curve:
        return {"plateaued": False, "rel_drop": None, "final_lr": None, "points_at_final_lr": 0, "window": 0,
                "reason": "no loss curve"}
    final_lr = min(float(p["lr"]) for p in curve)
    tail = [curve_total(p) for p in curve if math.isclose(float(p["lr"]), final_lr, rel_tol=1e-6, abs_tol=1e-12)]
    out = {"final_lr": final_lr, "points_at_final_lr": len(tail)}
    if len(tail) < 4:
        return dict(out, plateaued=False, rel_drop=None, window=0,
                    reason=f"{len(tail)} curve points at the final lr (need 4)")
    w = len(tail) // 4
    a, b = tail[-2 * w:-w], tail[-w:]
    mean_a = float(np.mean(a))
    rel = (mean_a - float(np.mean(b))) / abs(mean_a) if mean_a else 0.0
    return dict(out, plateaued=bool(rel < tol), rel_drop=float(rel), window=w)
