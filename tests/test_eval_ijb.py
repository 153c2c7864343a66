"""IJB: template pooling and TAR@FAR against InsightFace-style loops, 1:N against brute force,
malformed meta and missing images."""
import os

import numpy as np
import pytest

from shrinkteanet.core.errors import InputError
from shrinkteanet.eval import ijb
from _insightface import insightface_ref


def _synthetic(rs, n_img=2500, n_t=200, dim=32):
    templates = rs.randint(0, n_t, n_img) * 3 + 5
    medias = rs.randint(0, 4, n_img) + templates * 10
    feats = rs.randn(n_img, dim).astype(np.float32)
    return feats, templates, medias


def test_template_pooling_bit_identical_to_loop():
    rs = np.random.RandomState(0)
    feats, templates, medias = _synthetic(rs)
    x = ijb.input_features(feats, rs.uniform(0.1, 1, len(feats)), norm_score=False, detector_score=True)
    a, ua = ijb.template_features(x, templates, medias)
    b, ub = insightface_ref().loop_template_features(x, templates, medias)
    np.testing.assert_array_equal(ua, ub)
    np.testing.assert_array_equal(a, b)
    # hand check of one template: mean within media, sum over media, normalise
    t = ua[0]
    rows = np.flatnonzero(templates == t)
    acc = sum(x[rows[medias[rows] == m]].mean(0) for m in np.unique(medias[rows]))
    np.testing.assert_allclose(a[0], acc / np.linalg.norm(acc), rtol=1e-6)


def test_pair_scores_and_tar_against_direct_numpy():
    rs = np.random.RandomState(1)
    feats, templates, medias = _synthetic(rs, dim=16)
    tf, u = ijb.template_features(feats, templates, medias)
    # unique unordered pairs without self pairs, as IJB's pair lists are
    i, j = np.triu_indices(len(u), 1)
    pick = rs.choice(len(i), 12000, replace=False)
    t1, t2 = u[i[pick]], u[j[pick]]
    swap = rs.rand(len(t1)) < 0.5
    t1, t2 = np.where(swap, t2, t1), np.where(swap, t1, t2)
    s = ijb.pair_scores(tf, u, t1, t2, block=32, progress=False)
    ref_s = insightface_ref().loop_pair_scores(tf, u, t1, t2)
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-12)
    labels = (s + rs.randn(len(s)) * 0.2 > 0.1).astype(int)
    tars, area, _ = ijb.tar_at_far(labels, s)
    ref_tars, ref_auc = insightface_ref().loop_tar_at_far(labels, ref_s)
    assert tars == ref_tars and list(tars) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert area == pytest.approx(ref_auc, abs=1e-12)
    with pytest.raises(InputError, match="template 999999"):
        ijb.pair_scores(tf, u, np.array([999999]), np.array([u[0]]), progress=False)


def test_segment_sums_chunked_equal_sequential_row_sums():
    rs = np.random.RandomState(3)
    x = rs.randn(300, 5).astype(np.float32) * np.float32(1e3)
    rows = rs.permutation(300)
    counts = rs.randint(1, 9, 60)
    counts = counts[np.cumsum(counts) <= 300]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    sums, perm = ijb._segment_sums(x, rows, starts, counts, chunk=4)
    for k, seg in enumerate(perm):
        r = rows[starts[seg]:starts[seg] + counts[seg]]
        acc = x[r[0]].copy()
        for i in r[1:]:
            acc += x[i]
        np.testing.assert_array_equal(sums[k], acc)
    assert list(counts[perm]) == sorted(counts, reverse=True)


def _sk_roc(labels, scores):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def test_fast_roc_equals_sklearn_with_ties_and_duplicates():
    """_roc_curve rebuilds sklearn's curve (drop_intermediate included) from sorted negatives:
    every element equal on random scores with ties, duplicates, +-0.0, float32 and label types;
    TARs and AUC equal to the InsightFace loop that calls sklearn."""
    ref = insightface_ref()
    rs = np.random.RandomState(4)
    checked = 0
    for trial in range(1500):
        n = rs.randint(2, 200)
        kind = trial % 6
        if kind == 0:
            s = rs.randn(n)
        elif kind == 1:
            s = rs.randint(0, 5, n) * 0.5 - 1.0          # heavy ties across both classes
        elif kind == 2:
            s = np.round(rs.randn(n), 1)
        elif kind == 3:
            s = rs.choice([-0.0, 0.0, 1.0, -1.0, 5e-324, -5e-324], n)
        elif kind == 4:
            s = (rs.randint(0, 20, n) / 7).astype(np.float32)
        else:
            s = np.repeat(rs.randn(n // 2 + 1), 2)[:n]  # every score duplicated
        lab = (rs.rand(n) < rs.rand()).astype([np.int64, bool, np.float64][trial % 3])
        if lab.all() or not lab.any():
            continue
        fpr, tpr = ijb._roc_curve(lab, s)
        sk_fpr, sk_tpr = _sk_roc(lab, s)
        np.testing.assert_array_equal(fpr, sk_fpr)
        np.testing.assert_array_equal(tpr, sk_tpr)
        tars, area, _ = ijb.tar_at_far(lab, s, fars=(0.01, 0.1, 0.3, 0.5))
        ref_tars, ref_auc = ref.loop_tar_at_far(lab, s, x_labels=(0.01, 0.1, 0.3, 0.5))
        assert tars == ref_tars and area == ref_auc
        checked += 1
    assert checked > 1400
    # large: long runs of single negatives between positives, and a few tied negatives
    s = rs.randn(300_000)
    s[rs.choice(300_000, 3000)] = s[rs.choice(300_000, 3000)]
    lab = rs.rand(300_000) < 0.003
    fpr, tpr = ijb._roc_curve(lab, s)
    sk_fpr, sk_tpr = _sk_roc(lab, s)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)
    assert len(fpr) < 3 * lab.sum() + 3 * 3000  # the dropped points were dropped


def test_fast_roc_hand_worked():
    # scores desc 0.9 (pos), 0.8 (pos + neg), 0.3, 0.1 (neg): steps (0,1) (1,1) (1,0) (1,0);
    # the point at 0.3 lies between two equal steps and is dropped
    fpr, tpr = ijb._roc_curve(np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.8, 0.3, 0.1]))
    np.testing.assert_array_equal(fpr, [0, 0, 1 / 3, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
    tars, area, _ = ijb.tar_at_far([1, 0, 1, 0, 0], np.array([0.9, 0.8, 0.8, 0.3, 0.1]), fars=(0.1, 0.5))
    # FAR 0.1: |fpr - 0.1| is 0.1 at fpr[0] and fpr[1]: the last one -> TPR 0.5;
    # FAR 0.5: nearest fpr 1/3 -> TPR 1
    assert tars == {"0.1": 0.5, "0.5": 1.0}
    # AUC = P(pos > neg) + P(tie) / 2 = (3 + 2.5) / 6
    assert area == pytest.approx(5.5 / 6, abs=1e-15)
    # a tie among the negatives is a corner: (1,0) (2,0) (1,0) steps keep every point
    fpr, _ = ijb._roc_curve(np.array([0, 0, 0, 0, 1]), np.array([0.9, 0.8, 0.8, 0.7, 0.1]))
    np.testing.assert_array_equal(fpr, [0, 0.25, 0.75, 1, 1])
    fpr, _ = ijb._roc_curve(np.array([0, 0, 0, 0, 1]), np.array([0.9, 0.8, 0.75, 0.7, 0.1]))
    np.testing.assert_array_equal(fpr, [0, 0.25, 1, 1])
    fpr, tpr = ijb._roc_curve(np.array([1, 0, 1, 0]), np.full(4, 0.5))
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])


def test_fast_roc_leaves_odd_inputs_to_sklearn():
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning

    lab = np.array([-1, 1, 1, -1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    for a, b in zip(ijb._roc_curve(lab, s), _sk_roc(lab, s)):
        np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr = ijb._roc_curve(np.ones(3, int), np.array([0.2, 0.1, 0.3]))
    # no negatives: sklearn warns, FPR NaN; equal steps (0, 1) leave the first and last points
    assert np.isnan(fpr).all() and list(tpr) == [0, 1 / 3, 1]
    with pytest.raises(ValueError):
        ijb._roc_curve(np.array([0, 1, 0]), np.array([0.1, np.nan, 0.3]))


def test_identification_1n_against_brute_force():
    rs = np.random.RandomState(2)
    n_sub = 20
    feats = rs.randn(400, 16).astype(np.float32)
    templates = np.arange(400) // 5          # 80 templates of 5 images
    medias = np.arange(400) // 2
    g_t = np.arange(n_sub)                   # gallery: templates 0..19, subject = template
    p_t = np.arange(n_sub, 80)
    p_s = p_t % n_sub
    out, _ = ijb.identify_1n(feats, templates, medias, (g_t, g_t.copy()), (p_t, p_s))
    gf, _ = ijb.template_features(feats, templates, medias, g_t, normalise="manual")
    pf, _ = ijb.template_features(feats, templates, medias, p_t, normalise="manual")
    sim = pf @ gf.T
    order = np.argsort(-sim, axis=1)
    for r in (1, 5, 10):
        assert out[f"rank{r}"] == np.mean([p_s[k] in order[k, :r] for k in range(len(p_t))])
    neg = np.sort(np.concatenate([np.delete(sim[k], p_s[k]) for k in range(len(p_t))]))[::-1]
    th = neg[int(np.ceil(len(p_t) * 0.01)) - 1]
    assert out["tpir_at_fpir"]["0.01"] == np.mean(sim[np.arange(len(p_t)), p_s] > th)


def _tree(root, n_t=6, per_t=3):
    import cv2

    rs = np.random.RandomState(0)
    meta = root / "meta"
    meta.mkdir(parents=True)
    (root / "loose_crop").mkdir()
    lm = "30 40 60 40 45 55 34 70 58 70"
    tid, lmk = [], []
    for t in range(n_t):
        for k in range(per_t):
            name = f"{t}_{k}.jpg"
            cv2.imwrite(str(root / "loose_crop" / name), rs.randint(0, 255, (90, 90, 3)).astype(np.uint8))
            tid.append(f"{name} {t + 1} {t * 10 + k % 2}")
            lmk.append(f"{name} {lm} 0.9")
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(tid) + "\n")
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk) + "\n")
    pairs = [f"{a} {b} {int(a % 2 == b % 2)}" for a in range(1, n_t + 1) for b in range(a + 1, n_t + 1)]
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


class _FakeEmbedder:
    image_size = 16

    def embed(self, images, flip=True):
        x = images.reshape(len(images), -1).astype(np.float32) / 255.0
        return x[:, :8] + (x[:, -8:] if flip else 0) + 0.1


def test_run_end_to_end_and_missing_and_malformed(tmp_path):
    root = _tree(tmp_path / "IJBC")
    fields, curves, extra = ijb.run(_FakeEmbedder(), str(root), "IJBC", progress=False)
    assert fields["target"] == "IJBC" and set(fields["tar_at_far"]) == {"1e-06", "1e-05", "0.0001", "0.001",
                                                                      "0.01", "0.1"}
    assert 0.0 <= fields["auc"] <= 1.0 and extra is None
    os.remove(root / "loose_crop" / "2_1.jpg")
    with pytest.raises(InputError, match=r"1 image\(s\) missing.*2_1.jpg"):
        ijb.run(_FakeEmbedder(), str(root), "IJBC", progress=False)
    _, curves, _ = ijb.run(_FakeEmbedder(), str(root), "IJBC", allow_missing=True, progress=False)
    assert curves["num_missing"] == 1 and curves["missing"] == ["2_1.jpg"]
    p = root / "meta" / "ijbc_template_pair_label.txt"
    lines = p.read_text().splitlines()
    lines[3] = "1 x 0"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"ijbc_template_pair_label.txt:4:"):
        ijb.read_template_pairs(str(p))
    q = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = q.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 2)[0]
    q.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"ijbc_name_5pts_score.txt:2:"):
        ijb.run(_FakeEmbedder(), str(root), "IJBC", progress=False)
