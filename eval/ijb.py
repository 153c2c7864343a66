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
  grid from ``sklearn.metrics.roc_curve``: the TPR at the point whose FPR is nearest to
  the FAR, the last such point (InsightFace's ``min`` over the flipped curve); AUC =
  ``sklearn.metrics.auc(fpr, tpr)``;
* 1:N: gallery = G1 + G2 (IJB-B: S1 + S2), probes = ``*_1N_probe_mixed.csv``; rank-k hit
  when fewer than k gallery templates score strictly higher than the mated one (the
  order ``argsort(-similarity)`` gives when there are no ties); TPIR at FPIR f:
  threshold = the ``ceil(n_probes * f)``-th largest non-mated score, hit when the mated
  score is strictly greater (``ijb_1n.py``'s definition).
"""
import math
import os

import numpy as np

from shrinkteanet.constants import IJB_FARS
from shrinkteanet.errors import InputError
from shrinkteanet.logutil import get_logger

log = get_logger(__name__)


# ---------------------------------------------------------------- meta files
def _lines(path):
    if not os.path.isfile(path):
        raise InputError(f"{path}: IJB meta file not found")
    with open(path, "r") as f:
        for no, line in enumerate(f, 1):
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
    from shrinkteanet.eval.embed import read_image

    size = embedder.image_size
    feats, ok, missing = None, np.ones(len(names), bool), []
    for a in tqdm(range(0, len(names), chunk), desc="ijb", unit="chunk", disable=len(names) <= chunk):
        b = min(a + chunk, len(names))
        crops = np.zeros((b - a, size, size, 3), np.uint8)
        for i in range(a, b):
            img = read_image(os.path.join(image_dir, names[i]))
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


def _segment_sums(x, starts, counts):
    """Row sums of consecutive segments, accumulated row after row in the segment's order,
    which is how ``np.sum``/``np.mean(axis=0)`` reduce a float32 (n, D) array
    (``np.add.reduceat`` rounds differently).  Vectorised over segments: step k adds the
    k-th row of every segment longer than k."""
    out = x[starts].copy()
    if len(starts) == 0:
        return out
    by_len = np.argsort(-counts, kind="stable")
    sorted_counts = counts[by_len]
    for k in range(1, int(sorted_counts[0])):
        g = by_len[: int(np.searchsorted(-sorted_counts, -k, side="left"))]
        out[g] += x[starts[g] + k]
    return out


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
    x = feats[order]
    new_media = np.r_[True, (t_s[1:] != t_s[:-1]) | (m_s[1:] != m_s[:-1])]
    m_start = np.flatnonzero(new_media)
    m_count = np.diff(np.r_[m_start, len(order)])
    media = _segment_sums(x, m_start, m_count)
    multi = m_count > 1
    media[multi] = media[multi] / m_count[multi, None].astype(np.float32)
    mt = t_s[m_start]
    t_start = np.flatnonzero(np.r_[True, mt[1:] != mt[:-1]])
    pooled = _segment_sums(media, t_start, np.diff(np.r_[t_start, len(media)]))
    present = mt[t_start]
    out = np.zeros((len(uniq), feats.shape[1]), np.float64)
    out[np.searchsorted(uniq, present)] = pooled
    if normalise == "sklearn":
        from sklearn.preprocessing import normalize

        out = normalize(out)
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
    for blk in tqdm(np.flatnonzero(counts), desc="pairs", unit="blk", disable=not progress, mininterval=2.0):
        sel = order[starts[blk]:ends[blk]]
        r0 = int(blk) * block
        c = i2[sel]
        used[:] = False
        used[c] = True
        cols = np.flatnonzero(used)
        col_pos[cols] = np.arange(len(cols))
        g = tfeats[r0:r0 + block] @ tfeats[cols].T
        score[sel] = g[i1[sel] - r0, col_pos[c]]
    return score


def tar_at_far(labels, scores, fars=IJB_FARS):
    """``{str(far): tar}`` and AUC from ``sklearn.metrics.roc_curve`` as ijb_11.py reads it."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
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
    fields = {"target": target.upper(), **fields}
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
