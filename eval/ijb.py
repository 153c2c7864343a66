"""IJB-B / IJB-C template-based 1:1 verification and 1:N identification.

Follows InsightFace's ``recognition/_evaluation_/ijb/ijb_11.py`` and ``ijb_1n.py``:

* image feature: loose crop aligned by its 5 landmarks (``norm_crop``), ``emb(img) +
  emb(mirror)`` (``use_flip_test``; without it ``emb(img)``), float32; unless
  ``norm_score`` the feature is L2-normalised first; with ``detector_score`` it is
  multiplied by the faceness score (last column of ``*_name_5pts_score.txt``);
* template feature: per media the mean of its image features (float32), the media
  features summed (float32), then L2-normalised (float64; ``sklearn.preprocessing.normalize``
  for 1:1, ``x / sqrt(sum(x**2))`` for 1:N as the two scripts do).  Done here with one
  stable sort and ``np.add.reduceat`` (same summation order as InsightFace's loops, so
  the template features are bit-identical);
* 1:1 score = dot product of the two template features (float64; blocked matrix
  products instead of gathered row products, equal to ~1e-16); TAR at each FAR of the
  grid from ``sklearn.metrics.roc_curve``'s curve: the TPR at the point whose FPR is
  nearest to the FAR, the last such point (InsightFace's ``min`` over the flipped curve);
  AUC = ``sklearn.metrics.auc(fpr, tpr)``.  The curve is rebuilt here element for element
  (drop_intermediate included) from a sort of the negatives' scores only (``_roc_counts``),
  about 2x faster than sklearn's argsort of all 15.6M IJB-C scores;
* 1:N: gallery = G1 + G2 (IJB-B: S1 + S2), probes = ``*_1N_probe_mixed.csv``; rank-k hit
  when fewer than k gallery templates score strictly higher than the mated one (the
  order ``argsort(-similarity)`` gives when there are no ties); TPIR at FPIR f:
  threshold = the ``ceil(n_probes * f)``-th largest non-mated score, hit when the mated
  score is strictly greater (``ijb_1n.py``'s definition).
"""
import math
import os

import numpy as np

from shrinkteanet.core.constants import IJB_FARS
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


# ---------------------------------------------------------------- meta files
def _lines(path):
    if not os.path.isfile(path):
        raise InputError(f"{path}: IJB meta file not found")
    from shrinkteanet.core.utils import text_lines

    for no, line in text_lines(path):
        s = line.strip()
        if s:
            yield no, s


def read_template_media(path):
    """``*_face_tid_mid.txt``: ``image_name template_id media_id`` -> (names, templates, medias)."""
    names, tids, mids = [], [], []
    for no, s in _lines(path):
        f = s.split()
        if len(f) < 3:
            raise InputError(f"{path}:{no}: expected 'image template_id media_id', got {s[:80]!r}")
        try:
            tids.append(int(f[1]))
            mids.append(int(f[2]))
        except ValueError:
            raise InputError(f"{path}:{no}: template/media id is not an integer: {s[:80]!r}") from None
        names.append(f[0])
    return names, np.array(tids, np.int64), np.array(mids, np.int64)


def read_template_pairs(path):
    """``*_template_pair_label.txt``: ``t1 t2 label`` -> (t1, t2, label)."""
    t1, t2, lab = [], [], []
    for no, s in _lines(path):
        f = s.split()
        if len(f) < 3:
            raise InputError(f"{path}:{no}: expected 't1 t2 label', got {s[:80]!r}")
        try:
            a, b, c = int(f[0]), int(f[1]), int(f[2])
        except ValueError:
            raise InputError(f"{path}:{no}: non-integer field in {s[:80]!r}") from None
        if c not in (0, 1):
            raise InputError(f"{path}:{no}: label must be 0 or 1, got {c}")
        t1.append(a)
        t2.append(b)
        lab.append(c)
    return np.array(t1, np.int64), np.array(t2, np.int64), np.array(lab, np.int64)


def read_landmarks(path):
    """``*_name_5pts_score.txt``: ``name x1 y1 .. x5 y5 score`` -> (names, landmarks (N,5,2), scores)."""
    names, lmks, scores = [], [], []
    for no, s in _lines(path):
        f = s.split()
        if len(f) != 12:
            raise InputError(f"{path}:{no}: expected 'name' + 10 landmark numbers + score (12 fields), got {len(f)}")
        try:
            v = [float(x) for x in f[1:]]
        except ValueError:
            raise InputError(f"{path}:{no}: landmark/score is not a number: {s[:80]!r}") from None
        names.append(f[0])
        lmks.append(v[:10])
        scores.append(v[10])
    return names, np.array(lmks, np.float32).reshape(-1, 5, 2), np.array(scores, np.float32)


def read_template_subjects(path):
    """1:N csv (header line, then ``TEMPLATE_ID,SUBJECT_ID,...``) -> (templates, subjects)."""
    t, sid = [], []
    first = True
    for no, s in _lines(path):
        if first:
            first = False
            continue
        f = s.split(",")
        try:
            t.append(int(f[0]))
            sid.append(int(f[1]))
        except (ValueError, IndexError):
            raise InputError(f"{path}:{no}: expected 'TEMPLATE_ID,SUBJECT_ID,...', got {s[:80]!r}") from None
    return np.array(t, np.int64), np.array(sid, np.int64)


def meta_paths(root, target):
    t = target.upper()
    if t not in ("IJBB", "IJBC"):
        raise InputError(f"--target must be IJBB or IJBC, got {target!r}")
    low = t.lower()
    meta = os.path.join(root, "meta")
    g1, g2 = ("G1", "G2") if t == "IJBC" else ("S1", "S2")
    return {
        "tid_mid": os.path.join(meta, f"{low}_face_tid_mid.txt"),
        "pairs": os.path.join(meta, f"{low}_template_pair_label.txt"),
        "lmk": os.path.join(meta, f"{low}_name_5pts_score.txt"),
        "gallery1": os.path.join(meta, f"{low}_1N_gallery_{g1}.csv"),
        "gallery2": os.path.join(meta, f"{low}_1N_gallery_{g2}.csv"),
        "probe": os.path.join(meta, f"{low}_1N_probe_mixed.csv"),
        "images": os.path.join(root, "loose_crop"),
    }


# ---------------------------------------------------------------- features
def image_features(embedder, image_dir, names, landmarks, flip=True, chunk=256, allow_missing=False):
    """Aligned, embedded image features (float32, flip-fused); returns (feats, ok mask, missing names)."""
    from tqdm import tqdm

    from shrinkteanet.data.align import norm_crop
    from shrinkteanet.data.images import read_image_or_none

    size = embedder.image_size
    feats, ok, missing = None, np.ones(len(names), bool), []
    for a in tqdm(range(0, len(names), chunk), desc="ijb", unit="chunk", disable=len(names) <= chunk):
        b = min(a + chunk, len(names))
        crops = np.zeros((b - a, size, size, 3), np.uint8)
        for i in range(a, b):
            img = read_image_or_none(os.path.join(image_dir, names[i]))
            if img is None:
                ok[i] = False
                missing.append(names[i])
                continue
            crops[i - a] = norm_crop(img, landmarks[i], size)
        e = embedder.embed(crops, flip=flip).astype(np.float32)
        if feats is None:
            feats = np.zeros((len(names), e.shape[1]), np.float32)
        feats[a:b] = e
    if missing:
        listing = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        if not allow_missing:
            raise InputError(f"{image_dir}: {len(missing)} image(s) missing or unreadable "
                             f"(use --allow-missing): {listing}")
        log.warning("%d image(s) missing, left out of their templates: %s", len(missing), listing)
    return feats, ok, missing


def input_features(img_feats, faceness, norm_score=True, detector_score=True):
    """ijb_11.py's ``img_input_feats``: optional per-image L2 normalisation (norm_score off)
    and faceness weighting (detector_score on), float32."""
    x = np.asarray(img_feats, np.float32)
    if not norm_score:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if detector_score:
        x = x * np.asarray(faceness, np.float32)[:, np.newaxis]
    return x


def _segment_sums(x, rows, starts, counts, chunk=2048):
    """Row sums of segments (segment i: rows ``x[rows[starts[i] + k]]``, k < counts[i]),
    accumulated row after row in the segment's order, which is how ``np.sum``/``np.mean(axis=0)``
    reduce a float32 (n, D) array (``np.add.reduceat`` rounds differently).  Vectorised over
    segments: step k adds the k-th row of every segment longer than k.  Returns (sums, perm):
    the sums of the segments ``perm`` (longest first), so that step k updates a leading slice in
    place; no per-step temporaries (fresh large arrays cost page faults on top of the adds)."""
    perm = np.argsort(-counts, kind="stable")
    out = np.empty((len(starts), x.shape[1]), x.dtype)
    if len(starts) == 0:
        return out, perm
    sc, ss = counts[perm], starts[perm]
    np.take(x, rows[ss], axis=0, out=out)
    buf = np.empty((min(chunk, len(starts)), x.shape[1]), x.dtype)
    for k in range(1, int(sc[0])):
        g = int(np.searchsorted(-sc, -k, side="left"))  # segments longer than k: a prefix
        for a in range(0, g, chunk):  # the gathered rows are added while still in cache
            b = min(a + chunk, g)
            np.take(x, rows[ss[a:b] + k], axis=0, out=buf[:b - a])
            out[a:b] += buf[:b - a]
    return out, perm


def template_features(feats, templates, medias, choose=None, normalise="sklearn"):
    """Per template: media means summed, then L2-normalised.  ``choose``: the templates wanted
    (default all); returns (features float64 (T, D), unique templates sorted)."""
    feats = np.asarray(feats, np.float32)
    templates = np.asarray(templates)
    medias = np.asarray(medias)
    uniq = np.unique(templates if choose is None else choose)
    keep = np.isin(templates, uniq)
    idx = np.flatnonzero(keep)
    # stable: images of one media stay in file order, as np.where returns them
    order = idx[np.lexsort((medias[idx], templates[idx]))]
    t_s, m_s = templates[order], medias[order]
    new_media = np.r_[True, (t_s[1:] != t_s[:-1]) | (m_s[1:] != m_s[:-1])]
    m_start = np.flatnonzero(new_media)
    m_count = np.diff(np.r_[m_start, len(order)])
    media, m_perm = _segment_sums(feats, order, m_start, m_count)
    # longest first: the medias of more than one image are a prefix
    multi = int(np.count_nonzero(m_count > 1))
    media[:multi] /= m_count[m_perm[:multi], None].astype(np.float32)
    m_row = np.empty(len(m_perm), np.int64)
    m_row[m_perm] = np.arange(len(m_perm))
    mt = t_s[m_start]
    t_start = np.flatnonzero(np.r_[True, mt[1:] != mt[:-1]])
    pooled, t_perm = _segment_sums(media, m_row, t_start, np.diff(np.r_[t_start, len(media)]))
    present = mt[t_start]
    out = np.zeros((len(uniq), feats.shape[1]), np.float64)
    out[np.searchsorted(uniq, present)[t_perm]] = pooled
    if normalise == "sklearn":
        from sklearn.preprocessing import normalize

        out = normalize(out, copy=False)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = out / np.sqrt(np.sum(out ** 2, -1, keepdims=True))
    return out, uniq


def _template_index(uniq, t, name):
    """Row of each template id in ``uniq`` (a lookup table: O(n), unlike a search)."""
    hi = int(max(uniq.max(initial=0), t.max(initial=0))) + 1
    lo = int(min(uniq.min(initial=0), t.min(initial=0)))
    if hi - lo > 50_000_000:  # sparse huge ids: fall back to a search
        i = np.searchsorted(uniq, t)
        bad = (i >= len(uniq)) | (uniq[np.minimum(i, len(uniq) - 1)] != t)
    else:
        lut = np.full(hi - lo, -1, np.int64)
        lut[uniq - lo] = np.arange(len(uniq))
        i = lut[t - lo]
        bad = i < 0
    if bad.any():
        raise InputError(f"pair list: template {int(t[np.argmax(bad)])} ({name}) has no image in the media list")
    return i


def pair_scores(tfeats, uniq, t1, t2, block=1024, progress=True):
    """Dot product of the template features of every pair, by blocked matrix products over
    the side with fewer distinct templates (memory: one block x its columns)."""
    from tqdm import tqdm

    t1, t2 = np.asarray(t1), np.asarray(t2)
    i1 = _template_index(uniq, t1, "t1")
    i2 = _template_index(uniq, t2, "t2")
    # (a, b) and (b, a), or a pair listed twice, must get the very same float (InsightFace's
    # row products are symmetric); so each unordered pair reads one matrix entry
    i1, i2 = np.minimum(i1, i2), np.maximum(i1, i2)
    n_t = len(uniq)
    if np.count_nonzero(np.bincount(i2, minlength=n_t)) < np.count_nonzero(np.bincount(i1, minlength=n_t)):
        i1, i2 = i2, i1
    score = np.empty(len(i1), np.float64)
    bid = i1 // block
    bid = bid.astype(np.int16) if bid.max(initial=0) < 2**15 else bid  # 16-bit keys: radix sort
    order = np.argsort(bid, kind="stable")
    counts = np.bincount(bid, minlength=int(bid.max(initial=0)) + 1)
    ends = np.cumsum(counts)
    starts = ends - counts
    col_pos = np.zeros(n_t, np.int64)
    used = np.zeros(n_t, bool)
    # buffers reused by every block: fresh large arrays would cost page faults each time
    n_cols = int(np.count_nonzero(np.bincount(i2, minlength=n_t)))
    cols_buf = np.empty((n_cols, tfeats.shape[1]), tfeats.dtype)
    gram_buf = np.empty(min(block, n_t) * n_cols, np.result_type(tfeats.dtype, np.float32))
    for blk in tqdm(np.flatnonzero(counts), desc="pairs", unit="blk", disable=not progress, mininterval=2.0):
        sel = order[starts[blk]:ends[blk]]
        r0 = int(blk) * block
        rows = tfeats[r0:r0 + block]
        c = i2[sel]
        used[:] = False
        used[c] = True
        cols = np.flatnonzero(used)
        col_pos[cols] = np.arange(len(cols))
        feats_c = np.take(tfeats, cols, axis=0, out=cols_buf[:len(cols)])
        g = np.matmul(rows, feats_c.T, out=gram_buf[:len(rows) * len(cols)].reshape(len(rows), len(cols)))
        flat = (i1[sel] - r0) * len(cols)
        flat += col_pos[c]
        score[sel] = np.take(g.reshape(-1), flat)
    return score


_SIGN_OFF = np.int64(0x7FFFFFFFFFFFFFFF)


def _sorted_keys(x, chunk=1 << 20):
    """Sorted int64 keys with the order and equality of the float scores ``x`` (reuses ``x``'s
    memory when it is float64: pass a fresh array).
    IEEE-754 sign-magnitude becomes two's complement (negative floats: magnitude bits flipped);
    ``-0.0`` is first made ``+0.0``, as sklearn's ``np.diff`` sees them equal.  An int64 sort
    is about twice as fast as a float64 one (no NaN-aware comparisons); the transform runs in
    chunks so that its temporaries stay small."""
    k = np.asarray(x).astype(np.float64, copy=False)
    k += 0.0
    k = k.view(np.int64)
    tmp = np.empty(min(chunk, len(k)), np.int64)
    for a in range(0, len(k), chunk):
        part = k[a:a + chunk]
        m = tmp[:len(part)]
        np.right_shift(part, 63, out=m)
        m &= _SIGN_OFF
        part ^= m
    k.sort()
    return k


def _roc_counts(labels, scores):
    """The (fps, tps) counts behind ``sklearn.metrics.roc_curve(labels, scores)`` (default
    ``drop_intermediate=True``, with its leading (0, 0) point), as int64; None where sklearn
    must decide itself (labels other than 0/1, a single class, non-finite scores, not 1-D).

    sklearn sorts all scores and keeps, of the distinct-score points, the first, the last and
    each one whose step (negatives, positives at that score) differs from the next step.  Only
    the negatives are sorted here: the steps other than (1, 0) come from the distinct positive
    scores and the tied negatives ("special" scores, few); between two specials lie only
    single negatives, a run of equal (1, 0) steps of which just the last point survives."""
    lab, s = np.asarray(labels), np.asarray(scores)
    if lab.ndim != 1 or s.ndim != 1 or len(lab) != len(s) or s.dtype.kind != "f" or lab.dtype.kind not in "biuf":
        return None
    pos = lab.astype(bool) if lab.dtype.kind == "b" else lab == 1
    n = len(s)
    n_pos = int(np.count_nonzero(pos))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0 or (lab.dtype.kind != "b" and np.count_nonzero(lab == 0) != n_neg):
        return None
    if not np.isfinite(s).all():
        return None
    kn = _sorted_keys(s[~pos])
    pv, pc = np.unique(_sorted_keys(s[pos]), return_counts=True)
    tied = kn[np.flatnonzero(kn[1:] == kn[:-1])]  # sorted, with repeats
    sv = np.union1d(pv, tied)  # special scores, ascending
    lo = np.searchsorted(kn, sv, "left")
    hi = np.searchsorted(kn, sv, "right")
    dp = np.zeros(len(sv), np.int64)
    dp[np.searchsorted(sv, pv)] = pc
    # items in decreasing score: gap (single negatives above the highest special), special, gap, ...
    m = len(sv)
    step_n = np.ones(2 * m + 1, np.int64)
    step_p = np.zeros(2 * m + 1, np.int64)
    length = np.ones(2 * m + 1, np.int64)
    step_n[1::2] = (hi - lo)[::-1]
    step_p[1::2] = dp[::-1]
    length[0::2] = np.r_[n_neg - hi[-1], (lo[1:] - hi[:-1])[::-1], lo[0]]
    keep = length > 0
    step_n, step_p, length = step_n[keep], step_p[keep], length[keep]
    fps = np.cumsum(step_n * length)
    tps = np.cumsum(step_p * length)
    # a point survives where the next step differs; consecutive specials can share a step
    last = np.r_[(step_n[1:] != step_n[:-1]) | (step_p[1:] != step_p[:-1]), True]
    first_run = int(np.argmax(last)) + 1  # items in the first run of equal steps
    head = [step_n[0]] if length[:first_run].sum() > 1 else []
    fps = np.r_[0, head, fps[last]]
    tps = np.r_[0, [step_p[0]] if head else [], tps[last]]
    return fps.astype(np.int64), tps.astype(np.int64)


def _roc_curve(labels, scores):
    """(fpr, tpr) equal, element for element, to ``sklearn.metrics.roc_curve(labels, scores)[:2]``
    (InsightFace ijb_11.py's curve), from :func:`_roc_counts`; sklearn itself for the inputs
    that path leaves to it (so its errors and warnings stay the same)."""
    counts = _roc_counts(labels, scores)
    if counts is None:
        from sklearn.metrics import roc_curve as sk_roc_curve

        fpr, tpr, _ = sk_roc_curve(labels, scores)
        return fpr, tpr
    fps, tps = (c.astype(np.float64) for c in counts)  # sklearn's counts are float64 too
    return fps / fps[-1], tps / tps[-1]


def tar_at_far(labels, scores, fars=IJB_FARS):
    """``{str(far): tar}`` and AUC from the ROC curve of ``sklearn.metrics.roc_curve`` as ijb_11.py
    reads it: TAR at the point whose FPR is nearest to the FAR, AUC = ``sklearn.metrics.auc``."""
    from sklearn.metrics import auc

    fpr, tpr = _roc_curve(labels, scores)
    out = {}
    for far in fars:
        d = np.abs(fpr - far)
        # ijb_11.py: min over (|fpr - far|, index) of the *flipped* curve -> the last minimum
        j = len(d) - 1 - int(np.argmin(d[::-1]))
        out[str(float(far))] = float(tpr[j])
    return out, float(auc(fpr, tpr)), (fpr, tpr)


def verify_11(img_input_feats, templates, medias, t1, t2, labels, fars=IJB_FARS, progress=True):
    """Full 1:1 protocol on image input features; returns (fields, curves)."""
    tfeats, uniq = template_features(img_input_feats, templates, medias)
    scores = pair_scores(tfeats, uniq, t1, t2, progress=progress)
    tars, area, (fpr, tpr) = tar_at_far(labels, scores, fars)
    return {"tar_at_far": tars, "auc": area}, {"fpr": fpr, "tpr": tpr, "scores": scores}


def identify_1n(img_input_feats, templates, medias, gallery, probe, fpirs=(0.01, 0.1), ranks=(1, 5, 10)):
    """1:N on (templates, subjects) lists; returns {"rank1", "rank5", "rank10", "tpir_at_fpir": {...}}."""
    g_t, g_s = gallery
    p_t, p_s = probe
    g_feat, g_uniq = template_features(img_input_feats, templates, medias, g_t, normalise="manual")
    p_feat, p_uniq = template_features(img_input_feats, templates, medias, p_t, normalise="manual")
    _, gi = np.unique(g_t, return_index=True)
    _, pi = np.unique(p_t, return_index=True)
    g_ids, p_ids = g_s[gi], p_s[pi]
    pos = {}
    for k, sid in enumerate(g_ids):
        pos.setdefault(int(sid), []).append(k)
    mask = np.empty(len(p_ids), np.int64)
    for k, sid in enumerate(p_ids):
        hits = pos.get(int(sid), [])
        if len(hits) != 1:
            raise InputError(f"1:N gallery: subject {int(sid)} appears {len(hits)} times (need exactly once)")
        mask[k] = hits[0]
    sim = p_feat @ g_feat.T
    mated = sim[np.arange(len(mask)), mask]
    higher = np.sum(sim > mated[:, None], axis=1)
    out = {f"rank{r}": float(np.mean(higher < r)) for r in ranks}
    neg = sim.copy()
    neg[np.arange(len(mask)), mask] = -np.inf
    neg = neg[np.isfinite(neg)]
    tpir = {}
    for f in fpirs:
        k = math.ceil(len(mask) * f)
        th = np.partition(neg, neg.size - k)[neg.size - k]
        tpir[str(float(f))] = float(np.sum(mated > th) / len(mask))
    out["tpir_at_fpir"] = tpir
    out["num_probes"] = int(len(mask))
    out["num_gallery"] = int(len(g_ids))
    cmc = [float(np.mean(higher < r)) for r in range(1, 21)]
    return out, {"cmc": cmc}


def run(embedder, root, target="IJBC", flip=True, norm_score=True, detector_score=True, allow_missing=False,
        progress=True):
    """Whole IJB evaluation from the image tree; returns (fields, curves, extra 1:N or None)."""
    paths = meta_paths(root, target)
    names, templates, medias = read_template_media(paths["tid_mid"])
    lnames, lmks, faceness = read_landmarks(paths["lmk"])
    if len(lnames) != len(names):
        raise InputError(f"{paths['lmk']}: {len(lnames)} lines but {paths['tid_mid']} has {len(names)}")
    for i, (a, b) in enumerate(zip(names, lnames)):
        if a != b:
            raise InputError(f"{paths['lmk']}:{i + 1}: image {b!r} where {paths['tid_mid']} has {a!r}")
    t1, t2, labels = read_template_pairs(paths["pairs"])
    feats, ok, missing = image_features(embedder, paths["images"], names, lmks, flip, allow_missing=allow_missing)
    x = input_features(feats[ok], faceness[ok], norm_score, detector_score)
    fields, curves = verify_11(x, templates[ok], medias[ok], t1, t2, labels, progress=progress)
    labels = np.asarray(labels)
    fields = {"target": target.upper(), **fields, "num_pairs": int(labels.size),
              "num_genuine": int((labels == 1).sum())}
    extra = None
    if all(os.path.isfile(paths[k]) for k in ("gallery1", "gallery2", "probe")):
        g1 = read_template_subjects(paths["gallery1"])
        g2 = read_template_subjects(paths["gallery2"])
        gallery = (np.concatenate([g1[0], g2[0]]), np.concatenate([g1[1], g2[1]]))
        probe = read_template_subjects(paths["probe"])
        extra, cmc = identify_1n(x, templates[ok], medias[ok], gallery, probe)
        curves["cmc"] = cmc["cmc"]
    curves["num_missing"] = len(missing)
    curves["missing"] = missing
    return fields, curves, extra
