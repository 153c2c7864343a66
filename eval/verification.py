"""1:1 verification on InsightFace ``.bin`` sets (LFW, CFP-FP, AgeDB-30).

Computes exactly what InsightFace's MXNet-era ``recognition/eval/verification.py``
computes (``test()`` + ``evaluate()``), vectorised over thresholds:

* embeddings: ``emb(image) + emb(mirror)``, then L2-normalised
  (``sklearn.preprocessing.normalize``), in float64 as InsightFace's ``np.zeros``
  buffers were;
* ``dist = sum((e1 - e2)**2)`` over consecutive pairs ``(2i, 2i+1)``;
  "same" when ``dist < threshold``;
* accuracy: thresholds ``np.arange(0, 4, 0.01)``, 10 folds in order
  (``KFold(n_splits=10, shuffle=False)``: the first ``P % 10`` folds hold one pair
  more), the best threshold on the nine training folds by accuracy (``argmax``: the
  first maximum), accuracy of that threshold on the test fold;
  ``accuracy = mean``, ``accuracy_std = np.std`` over folds;
* TAR at FAR=1e-3 (``calculate_val``): thresholds ``np.arange(0, 4, 0.001)``;
  per fold, the training FAR at every threshold; if ``max(far) >= 1e-3`` the
  threshold is SciPy's ``interp1d(far_train, thresholds, kind='slinear')(1e-3)``
  as SciPy 1.0-1.4 evaluated it (see :func:`legacy_slinear_interp`), else 0.0;
  ``tar`` = mean and ``tar_std`` = std of the test-fold TA/n_same, ``far`` = mean
  test-fold FA/n_diff;
* ``xnorm``: InsightFace's ``_xnorm`` = mean L2 norm of the raw (unnormalised)
  network outputs of every image and every mirror image;
* ``threshold`` (not reported by InsightFace): the mean over folds of the
  training-fold best accuracy threshold (squared L2 on normalised embeddings).

TAR@FAR=1e-3 is unstable under ties: ``far_train`` holds long runs of equal values and
the interpolation reads the two sorted neighbours of 1e-3, so the order the sort leaves
inside a run decides the threshold.  ``tie_order='legacy'`` (default) is SciPy < 1.6,
InsightFace's own era (NumPy's non-stable quicksort); ``tie_order='stable'`` is SciPy
1.6-1.8 (a stable sort).  On well-separated 600-pair sets (accuracy 1.0) the two differ
widely: 0.070 vs 1.000 in issue 16's example, 0.527 vs 1.000 in
``tests/test_reliability_inputs.py`` (``docs/reliability.md``); the report field
``tar_tie_order`` says which was used.
"""
import os

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.data.binfile import load_bin  # noqa: F401 - the CONTRACTS name eval.verification.load_bin

log = get_logger(__name__)

#: InsightFace's threshold grids (``evaluate()``), built the same way so the floats match bit for bit.
ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGET = 1e-3
#: ``tie_order`` -> the argsort kind SciPy's ``interp1d`` used in that era.
TIE_ORDERS = {"legacy": "quicksort", "stable": "stable"}


def kfold_bounds(n, nrof_folds=10):
    """Test-fold ``[start, stop)`` bounds of ``sklearn.model_selection.KFold(n_splits, shuffle=False)``:
    contiguous blocks in order, the first ``n % k`` of size ``n // k + 1``."""
    if nrof_folds < 2:
        # InsightFace's LFold(n_splits=1) trains and tests on everything.
        return [(0, n)]
    if n < nrof_folds:
        raise InputError(f"verification needs at least {nrof_folds} pairs for {nrof_folds} folds, got {n}")
    sizes = np.full(nrof_folds, n // nrof_folds, dtype=np.int64)
    sizes[: n % nrof_folds] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for s, b in zip(sizes, stops)]


def _less_counts(values, thresholds):
    """For every threshold t, how many ``values < t`` (the ``np.less`` of InsightFace's predict_issame)."""
    return np.searchsorted(np.sort(values), thresholds, side="left").astype(np.int64)


def legacy_slinear_interp(x, y, x_new, sort_kind="quicksort"):
    """``scipy.interpolate.interp1d(x, y, kind='slinear')(x_new)`` as SciPy 1.0-1.4 computed it.

    InsightFace calls it on ``far_train``, which has many repeated values; SciPy >= 1.5
    refuses repeated x ("Expect x to not have duplicates").  The old code path was:
    ``ind = np.argsort(x)`` (NumPy's default, non-stable quicksort, so the order inside a
    run of equal x is the introsort's), then ``make_interp_spline(x[ind], y[ind], k=1)``
    = ``BSpline(t=[x0, x0, x1, .., xn-1, xn-1], c=y, k=1)`` with no check of x, and
    evaluation by de Boor on the interval ``l`` = the last knot ``<= x_new`` (capped at the
    last interval).  So: with ``j`` the last sorted index ``<= n-2`` whose x is ``<= x_new``,
    the result is ``y[j]*w*(x[j+1]-x_new) + y[j+1]*w*(x_new-x[j])``, ``w = 1/(x[j+1]-x[j])``,
    and 0.0 when that interval has zero length (de Boor skips it).  The float operations
    are done in the same order as SciPy's ``_deBoor_D`` so the result is bit-identical.
    NumPy's quicksort argsort of float64 is the same introsort from NumPy 1.x up to the
    pinned 1.23.5; a NumPy with AVX-512 sorting (>= 1.25) may order ties differently.
    ``sort_kind='stable'`` gives SciPy 1.6-1.8's order (equal x keep their input order).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ind = np.argsort(x, kind=sort_kind)
    xs, ys = x[ind], y[ind]
    n = xs.shape[0]
    if n < 2:
        raise ValueError("slinear interpolation needs at least 2 points")
    if not (xs[0] <= x_new <= xs[-1]):
        raise ValueError("x_new outside the interpolation range")
    j = int(np.searchsorted(xs, x_new, side="right")) - 1
    j = min(max(j, 0), n - 2)
    xa, xb = xs[j], xs[j + 1]
    if xb == xa:
        return 0.0
    w = 1.0 / (xb - xa)
    h0 = 0.0 + w * (xb - x_new)
    h1 = w * (x_new - xa)
    return float(0.0 + ys[j] * h0 + ys[j + 1] * h1)


def pair_distances(embeddings):
    """L2-normalise (sklearn, float64) and return the squared L2 distance of each pair (2i, 2i+1)."""
    from sklearn.preprocessing import normalize

    emb = normalize(np.asarray(embeddings, dtype=np.float64))
    e1, e2 = emb[0::2], emb[1::2]
    return np.sum(np.square(np.subtract(e1, e2)), 1)


def _roc_folds(dist, issame, bounds, thresholds):
    """InsightFace's ``calculate_roc`` (pca=0) without a loop over thresholds."""
    pos_all = _less_counts(dist[issame], thresholds)
    neg_all = _less_counts(dist[~issame], thresholds)
    n_pos_all, n_neg_all = int(issame.sum()), int((~issame).sum())
    k = len(bounds)
    tprs = np.zeros((k, len(thresholds)))
    fprs = np.zeros((k, len(thresholds)))
    accuracy = np.zeros(k)
    best = np.zeros(k)
    for f, (a, b) in enumerate(bounds):
        d, s = dist[a:b], issame[a:b]
        pos_test = _less_counts(d[s], thresholds)
        neg_test = _less_counts(d[~s], thresholds)
        n_pos_test, n_neg_test = int(s.sum()), int((~s).sum())
        if k > 1:
            tp_tr = pos_all - pos_test
            fp_tr = neg_all - neg_test
            n_tr = len(dist) - (b - a)
            tn_tr = (n_neg_all - n_neg_test) - fp_tr
        else:
            tp_tr, fp_tr, n_tr = pos_test, neg_test, b - a
            tn_tr = n_neg_test - fp_tr
        acc_train = (tp_tr + tn_tr).astype(np.float64) / float(n_tr)
        bi = int(np.argmax(acc_train))
        tn_test = n_neg_test - neg_test
        tprs[f] = pos_test / n_pos_test if n_pos_test else 0.0
        fprs[f] = neg_test / n_neg_test if n_neg_test else 0.0
        accuracy[f] = float(pos_test[bi] + tn_test[bi]) / float(b - a)
        best[f] = thresholds[bi]
    return tprs.mean(0), fprs.mean(0), accuracy, best


def _val_folds(dist, issame, bounds, thresholds, far_target, sort_kind="quicksort"):
    """InsightFace's ``calculate_val`` without a loop over thresholds."""
    neg_all = _less_counts(dist[~issame], thresholds)
    n_neg_all = int((~issame).sum())
    k = len(bounds)
    val = np.zeros(k)
    far = np.zeros(k)
    for f, (a, b) in enumerate(bounds):
        d, s = dist[a:b], issame[a:b]
        if k > 1:
            fa_tr = neg_all - _less_counts(d[~s], thresholds)
            n_diff_tr = n_neg_all - int((~s).sum())
        else:
            fa_tr, n_diff_tr = neg_all, n_neg_all
        with np.errstate(divide="ignore", invalid="ignore"):
            far_train = fa_tr.astype(np.float64) / float(n_diff_tr)
        if np.max(far_train) >= far_target:
            threshold = legacy_slinear_interp(far_train, thresholds, far_target, sort_kind)
        else:
            threshold = 0.0
        n_same, n_diff = int(s.sum()), int((~s).sum())
        ta = int(np.sum(d[s] < threshold))
        fa = int(np.sum(d[~s] < threshold))
        # InsightFace divides by zero here (ZeroDivisionError); report NaN instead.
        val[f] = ta / n_same if n_same else np.nan
        far[f] = fa / n_diff if n_diff else np.nan
    return val, far


def check_tie_order(tie_order):
    """``'legacy'`` or ``'stable'`` (see the module docstring); anything else is an ``InputError``."""
    if tie_order not in TIE_ORDERS:
        raise InputError(f"tie_order={tie_order!r}: expected one of {', '.join(TIE_ORDERS)}")
    return TIE_ORDERS[tie_order]


def evaluate_full(embeddings, issame, nrof_folds=10, xnorm=None, tie_order="legacy"):
    """:func:`evaluate` plus the mean test-fold ROC on the 0.01 grid: ``(fields, curves)``,
    ``curves = {"thresholds", "tpr", "fpr", "accuracy_folds", "tar_folds", "far_folds"}``."""
    sort_kind = check_tie_order(tie_order)
    emb = np.asarray(embeddings)
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise InputError(f"embeddings must be (2P, D), got shape {emb.shape}")
    if emb.shape[0] // 2 != issame.shape[0]:
        raise InputError(f"{emb.shape[0]} embeddings do not make {issame.shape[0]} pairs")
    if xnorm is None:
        xnorm = float(np.mean(np.linalg.norm(emb.astype(np.float64), axis=1)))
    dist = pair_distances(emb)
    bounds = kfold_bounds(len(dist), nrof_folds)
    tpr, fpr, accuracy, best = _roc_folds(dist, issame, bounds, ACC_THRESHOLDS)
    val, far = _val_folds(dist, issame, bounds, VAL_THRESHOLDS, FAR_TARGET, sort_kind)
    fields = {
        "accuracy": float(np.mean(accuracy)),
        "accuracy_std": float(np.std(accuracy)),
        "tar": float(np.mean(val)),
        "tar_std": float(np.std(val)),
        "far": float(np.mean(far)),
        "threshold": float(np.mean(best)),
        "xnorm": float(xnorm),
    }
    curves = {
        "thresholds": ACC_THRESHOLDS,
        "tpr": tpr,
        "fpr": fpr,
        "accuracy_folds": accuracy,
        "tar_folds": val,
        "far_folds": far,
        "best_thresholds": best,
    }
    return fields, curves


def evaluate(embeddings, issame, nrof_folds=10, xnorm=None, tie_order="legacy"):
    """CONTRACTS ``evaluate``: flip-fused embeddings (2P, D) and issame (P,) ->
    ``{accuracy, accuracy_std, tar, tar_std, far, threshold, xnorm}`` (unrounded).

    ``xnorm`` defaults to the mean norm of the given rows; pass InsightFace's figure
    (mean norm over unfused image and mirror outputs) when you have it.  ``tie_order``:
    ``'legacy'`` (SciPy < 1.6, default) or ``'stable'`` (SciPy 1.6-1.8) for TAR@FAR."""
    return evaluate_full(embeddings, issame, nrof_folds, xnorm, tie_order)[0]


def xnorm_of(parts):
    """InsightFace's XNorm: mean L2 norm over every raw output (images and mirrors alike)."""
    norms = [np.linalg.norm(np.asarray(p, dtype=np.float64), axis=1) for p in parts]
    return float(np.mean(np.concatenate(norms)))


def run_targets(embedder, data_dir, targets, nrof_folds=10, tie_order="legacy"):
    """Embed and evaluate each ``DATA_DIR/<target>.bin``; returns ``{target: (fields, curves)}``,
    ``fields`` with ``tar_tie_order`` beside the ``evaluate`` figures."""
    out = {}
    for target in targets:
        path = os.path.join(data_dir, f"{target}.bin")
        if not os.path.isfile(path):
            raise InputError(f"{path}: verification set not found (target {target!r})")
        size = int(getattr(embedder, "image_size", 112))
        images, issame = load_bin(path, image_size=(size, size))
        log.info("%s: %d pairs, embedding %d images (+ mirrors)", target, len(issame), len(images))
        emb, emb_flip = embedder.embed_parts(images)
        fields, curves = evaluate_full(emb + emb_flip, issame, nrof_folds, xnorm=xnorm_of((emb, emb_flip)),
                                       tie_order=tie_order)
        fields["tar_tie_order"] = tie_order  # the report says which order the TAR figures follow
        log.info("%s: accuracy %.5f+-%.5f, TAR %.5f@FAR %.5f", target, fields["accuracy"],
                 fields["accuracy_std"], fields["tar"], fields["far"])
        out[target] = (fields, curves)
    return out
