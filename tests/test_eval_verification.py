"""Verification metrics against hand-worked cases and InsightFace-style loops."""
import numpy as np
import pytest

from shrinkteanet.core.errors import InputError
from shrinkteanet.eval import verification as V
from _insightface import insightface_ref


def _pairs_with_dist(dists, d=4):
    """Unit embeddings whose pair squared-L2 distances are exactly the given values."""
    emb = np.zeros((2 * len(dists), d))
    for i, dd in enumerate(dists):
        c = 1 - dd / 2.0  # |a-b|^2 = 2 - 2cos
        emb[2 * i] = [1, 0, 0, 0]
        emb[2 * i + 1] = [c, np.sqrt(max(0.0, 1 - c * c)), 0, 0]
    return emb


def test_hand_worked_accuracy_two_folds():
    # fold 0 = pairs 0..3, fold 1 = pairs 4..7 (in order, no shuffle)
    dists = [0.5, 0.6, 1.5, 1.6, 0.4, 1.25, 1.4, 1.7]
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    res = V.evaluate(_pairs_with_dist(dists), same, nrof_folds=2)
    # fold 0 trains on fold 1: perfect split for t in (1.25, 1.4] -> first max at 1.26 -> fold 0 test all right
    # fold 1 trains on fold 0: perfect for t in (0.6, 1.5] -> first max at 0.61 -> pair 5 (1.25, same) wrong: 3/4
    assert res["accuracy"] == pytest.approx((1.0 + 0.75) / 2, abs=1e-12)
    assert res["accuracy_std"] == pytest.approx(0.125, abs=1e-12)
    assert res["threshold"] == pytest.approx((1.26 + 0.61) / 2, abs=1e-9)
    assert res["xnorm"] == pytest.approx(1.0)


def test_kfold_bounds_match_sklearn_in_order():
    from sklearn.model_selection import KFold

    for n in (10, 23, 6000, 7001):
        ref = [(int(te[0]), int(te[-1]) + 1) for _, te in KFold(10, shuffle=False).split(np.arange(n))]
        assert V.kfold_bounds(n, 10) == ref
    with pytest.raises(InputError):
        V.kfold_bounds(5, 10)


def test_fold_order_matters_and_is_kept():
    # the same pairs in another order give another answer: folds are contiguous, never shuffled
    rs = np.random.RandomState(3)
    p = 200
    same = rs.rand(p) < 0.5
    d = np.where(same, rs.uniform(0.2, 1.6, p), rs.uniform(1.0, 2.6, p))
    a = V.evaluate(_pairs_with_dist(d), same)
    perm = rs.permutation(p)
    b = V.evaluate(_pairs_with_dist(d[perm]), same[perm])
    assert a["accuracy"] != b["accuracy"] or a["accuracy_std"] != b["accuracy_std"]
    assert a == insightface_ref().loop_evaluate(_pairs_with_dist(d), same)


@pytest.mark.parametrize("seed,noise", [(0, 1.0), (1, 1.4), (2, 0.7)])
def test_identical_to_insightface_loops(seed, noise):
    rs = np.random.RandomState(seed)
    p, dim = 1200, 32
    base = rs.randn(p, dim)
    same = rs.rand(p) < 0.5
    e1 = base + rs.randn(p, dim) * noise
    e2 = np.where(same[:, None], base + rs.randn(p, dim) * noise, rs.randn(p, dim) * 1.3)
    emb = np.empty((2 * p, dim))
    emb[0::2], emb[1::2] = e1, e2
    assert V.evaluate(emb, same) == insightface_ref().loop_evaluate(emb, same)


def test_legacy_slinear_matches_old_scipy_path_with_duplicates():
    ref = insightface_ref().old_scipy_slinear
    thresholds = np.arange(0, 4, 0.001)
    rs = np.random.RandomState(0)
    neg = np.sort(rs.uniform(0.5, 3.9, 2700))
    far = np.searchsorted(neg, thresholds, side="left") / 2700.0  # many repeated values
    for target in (1e-3, 0.0, 5 / 2700.0, 0.25, far.max()):
        assert V.legacy_slinear_interp(far, thresholds, target) == float(ref(far, thresholds, target))
    # hand-worked: a unique x is plain linear interpolation
    assert V.legacy_slinear_interp([0.0, 1.0, 3.0], [0.0, 10.0, 30.0], 2.0) == pytest.approx(20.0)
    # de Boor skips a zero-length last interval: value 0 at the repeated maximum
    assert V.legacy_slinear_interp([0.0, 0.5, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0], 1.0) == 0.0


def test_tar_hand_worked():
    # negatives antipodal (dist exactly 4.0): no threshold of 0..3.999 reaches FAR 1e-3, so
    # InsightFace's calculate_val falls back to threshold 0.0 -> nothing accepted: TAR 0, FAR 0,
    # fold 0 (positives 0.1..0.5) gets threshold 1.01 from fold 1: all right; fold 1 (0.6..1.0)
    # gets 0.51 from fold 0: its 5 positives are wrong -> (1.0 + 0.5) / 2
    dists, same = [], []
    for k in range(10):
        dists += [0.1 * (k + 1), 4.0]
        same += [True, False]
    res = V.evaluate(_pairs_with_dist(dists), np.array(same), nrof_folds=2)
    assert res["tar"] == 0.0 and res["far"] == 0.0
    assert res["accuracy"] == 0.75 and res["accuracy_std"] == 0.25
    # one negative inside the range: fold 1 trains on fold 0 whose FAR jumps 0 -> 0.2 at 2.0;
    # every accepted pair then has dist < threshold, and TAR/FAR are the counts below it
    dists[1] = 1.99
    res = V.evaluate(_pairs_with_dist(dists), np.array(same), nrof_folds=2)
    ref = insightface_ref().loop_evaluate(_pairs_with_dist(dists), np.array(same), nrof_folds=2)
    assert res == ref


def test_bad_shapes():
    with pytest.raises(InputError):
        V.evaluate(np.zeros((5, 4)), np.zeros(2, bool))
    with pytest.raises(InputError):
        V.evaluate(np.zeros((40, 4)), np.zeros(19, bool))


def test_load_bin_is_the_data_helpers():
    from shrinkteanet.data import binfile

    assert V.load_bin is binfile.load_bin


def test_cli_verification_report(tmp_path):
    import json

    import mxnet as mx

    from shrinkteanet.cli import main
    from shrinkteanet.data.binfile import write_bin

    data = mx.sym.var("data")
    x = mx.sym.Pooling((data - 127.5) * 0.0078125, kernel=(14, 14), stride=(14, 14), pool_type="avg")
    x = mx.sym.FullyConnected(mx.sym.Flatten(x), num_hidden=16, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="fc1")
    rs = np.random.RandomState(0)
    arg = {"pre_fc1_weight": mx.nd.array(rs.randn(16, 192) * 0.1), "pre_fc1_bias": mx.nd.zeros(16),
           "fc1_gamma": mx.nd.ones(16), "fc1_beta": mx.nd.zeros(16)}
    aux = {"fc1_moving_mean": mx.nd.zeros(16), "fc1_moving_var": mx.nd.ones(16)}
    mx.model.save_checkpoint(str(tmp_path / "m"), 1, fc1, arg, aux)
    base = rs.randint(0, 256, (20, 112, 112, 3))
    imgs, same = [], []
    for i in range(20):
        s = i % 2 == 0
        other = base[i] if s else base[(i + 1) % 20]
        imgs += [base[i].astype(np.uint8), np.clip(other + rs.randint(-20, 20, other.shape), 0, 255).astype(np.uint8)]
        same.append(s)
    write_bin(str(tmp_path / "lfw.bin"), imgs, same)
    out = tmp_path / "rep"
    rc = main(["eval", "verification", "--model", f"{tmp_path / 'm'},1", "--data-dir", str(tmp_path),
               "--targets", "lfw", "--out", str(out), "--json", str(tmp_path / "v.json"), "--batch-size", "8"])
    assert rc == 0
    rep = json.loads((tmp_path / "v.json").read_text())
    # CONTRACTS fields plus the tie order the TAR figures follow (issue 16, defect 9), the fold count
    # and the model the numbers came from (issue 21)
    assert set(rep["lfw"]) == {"accuracy", "accuracy_std", "tar", "tar_std", "far", "threshold", "xnorm",
                               "tar_tie_order", "nfolds", "model"} and rep["lfw"]["tar_tie_order"] == "legacy"
    assert rep["lfw"]["nfolds"] == 10 and rep["lfw"]["model"]["prefix"] == str(tmp_path / "m")
    assert rep == json.loads((out / "verification.json").read_text())
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG" and "| lfw |" in (out / "verification.md").read_text()
    assert main(["eval", "verification", "--model", f"{tmp_path / 'm'},1", "--data-dir", str(tmp_path),
                 "--targets", "cfp_fp", "--out", str(out)]) == 2
