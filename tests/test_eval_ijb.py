"""IJB: template pooling and TAR@FAR against InsightFace-style loops, 1:N against brute force,
malformed meta and missing images."""
import importlib.util
import os

import numpy as np
import pytest

from shrinkteanet.errors import InputError
from shrinkteanet.eval import ijb


def _ref():
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "_insightface_ref.py")
    spec = importlib.util.spec_from_file_location("_insightface_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    b, ub = _ref().loop_template_features(x, templates, medias)
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
    ref_s = _ref().loop_pair_scores(tf, u, t1, t2)
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-12)
    labels = (s + rs.randn(len(s)) * 0.2 > 0.1).astype(int)
    tars, area, _ = ijb.tar_at_far(labels, s)
    ref_tars, ref_auc = _ref().loop_tar_at_far(labels, ref_s)
    assert tars == ref_tars and list(tars) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert area == pytest.approx(ref_auc, abs=1e-12)
    with pytest.raises(InputError, match="template 999999"):
        ijb.pair_scores(tf, u, np.array([999999]), np.array([u[0]]), progress=False)


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
