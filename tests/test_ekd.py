"""EKD (``methods/ekd.py``, ``methods/_ekd_terms.py``): the thresholds at the FPR anchors, their
EMA, the rank-based loss on the positive and the top-k negative pairs and its gradient, against an
independent numpy computation written pair by pair (Huang et al. 2022, as TFace's ``ekd.py``), to 1e-5."""
import types

import mxnet as mx
import numpy as np
import pytest
from easydict import EasyDict
from mxnet import autograd

from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.base import registry
from shrinkteanet.methods.base.ekd_terms import EKDTerm
from shrinkteanet.methods.ekd import check
from shrinkteanet.methods.base.terms import StepViews
from shrinkteanet.training import config

LABELS = [0, 0, 1, 1, 2, 2, 3]  # 21 pairs: 3 positive, 18 negative
RNG = np.random.RandomState(3)
STUDENT = RNG.randn(7, 4)
TEACHER = RNG.randn(7, 6)  # a wider teacher: EKD compares similarities within each network
S_THRESHOLDS = np.array([0.5, 0.3, 0.2, 0.1, 0.0, -0.1])
T_THRESHOLDS = np.array([0.4, 0.35, 0.1, 0.05, 0.0, 0.2])


def ekd_cfg(**changes):
    cfg = EasyDict(config.distill_table().ekd)
    cfg.update(changes)
    return cfg


def numpy_ekd(s, t, labels, s_thr, t_thr, cfg):
    """(L_pos, L_neg, new student thresholds, new teacher thresholds), pair by pair."""
    su, tu = s / np.linalg.norm(s, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))]
    pos = [(i, j) for i, j in pairs if labels[i] == labels[j]]
    neg = [(i, j) for i, j in pairs if labels[i] != labels[j]]
    new = []
    for emb, old in ((su, s_thr), (tu, t_thr)):
        ranked = sorted((emb[i] @ emb[j] for i, j in neg), reverse=True)
        at = np.array([ranked[len(neg) // int(a)] for a in cfg.ekd_fpr_anchors])
        new.append(cfg.ekd_momentum * at + (1 - cfg.ekd_momentum) * old)

    def count(sim, thr):
        return sum(1 / (1 + np.exp(np.clip(-(sim - th) / cfg.ekd_temperature, -50, 50))) for th in thr)

    def sq(i, j):
        return (count(su[i] @ su[j], new[0]) - count(tu[i] @ tu[j], new[1])) ** 2

    hard = sorted(neg, key=lambda p: -(su[p[0]] @ su[p[1]]))[:cfg.ekd_topk]
    return np.mean([sq(i, j) for i, j in pos]), np.mean([sq(i, j) for i, j in hard]), new[0], new[1]


def numpy_grad(s, t, labels, thresholds, cfg, eps=1e-6):
    """d(w_pos L_pos + w_neg L_neg)/d(student embedding), central differences in float64, with the
    thresholds after the update held fixed (they carry no gradient): momentum 0 around ``thresholds``."""
    fixed = EasyDict(cfg, ekd_momentum=0.0)  # momentum 0 keeps the thresholds passed in
    g = np.zeros_like(s)

    def total(x):
        lp, ln, _, _ = numpy_ekd(x, t, labels, thresholds[0], thresholds[1], fixed)
        return cfg.ekd_pos_weight * lp + cfg.ekd_neg_weight * ln

    for idx in np.ndindex(*s.shape):
        hi, lo = s.copy(), s.copy()
        hi[idx] += eps
        lo[idx] -= eps
        g[idx] = (total(hi) - total(lo)) / (2 * eps)
    return g


def run_term(cfg, train=True):
    term = EKDTerm(types.SimpleNamespace(cfg=cfg, ctx=[mx.cpu()]))
    term.student_thresholds.set_data(mx.nd.array(S_THRESHOLDS))
    term.teacher_thresholds.set_data(mx.nd.array(T_THRESHOLDS))
    s = mx.nd.array(STUDENT)
    s.attach_grad()
    batch = StepViews(emb=s, taps=None, t_emb=mx.nd.array(TEACHER), t_taps=None, label=mx.nd.array(LABELS))
    with autograd.record(train_mode=train):
        parts = term(batch)
        total = parts["ekd_pos"].sum() + parts["ekd_neg"].sum()
    total.backward()
    return ({k: v.asnumpy() for k, v in parts.items()}, s.grad.asnumpy() / len(LABELS),
            term.student_thresholds.data().asnumpy(), term.teacher_thresholds.data().asnumpy())


@pytest.mark.parametrize("changes", [{}, dict(ekd_temperature=0.1, ekd_topk=5, ekd_momentum=0.5,
                                              ekd_fpr_anchors=[2, 3, 6, 10, 18, 100])],
                         ids=["TFace defaults", "smooth, top-5"])
def test_loss_thresholds_and_gradient_match_numpy(changes):
    cfg = ekd_cfg(**changes)
    parts, grad, s_thr, t_thr = run_term(cfg)
    l_pos, l_neg, want_s, want_t = numpy_ekd(STUDENT, TEACHER, LABELS, S_THRESHOLDS, T_THRESHOLDS, cfg)
    np.testing.assert_allclose(s_thr, want_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t_thr, want_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(parts["ekd_pos"], np.full(7, cfg.ekd_pos_weight * l_pos), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(parts["ekd_neg"], np.full(7, cfg.ekd_neg_weight * l_neg), rtol=1e-5, atol=1e-5)
    want_grad = numpy_grad(STUDENT, TEACHER, LABELS, (want_s, want_t), cfg)
    assert np.abs(want_grad).max() > 1e-3  # the example reaches the steep part of the sigmoids
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-5)


def test_hand_worked_threshold_index():
    """18 negative pairs: FPR 1/10 is the negative of rank 18 // 10 = 1 (the second most similar),
    every smaller FPR the most similar one (rank 0); momentum 0.01 moves the old value 1 %."""
    cfg = ekd_cfg()
    su = STUDENT / np.linalg.norm(STUDENT, axis=1, keepdims=True)
    neg = sorted((su[i] @ su[j] for i in range(7) for j in range(i + 1, 7) if LABELS[i] != LABELS[j]), reverse=True)
    _, _, s_thr, _ = run_term(cfg)
    np.testing.assert_allclose(s_thr[0], 0.01 * neg[1] + 0.99 * S_THRESHOLDS[0], atol=1e-6)
    np.testing.assert_allclose(s_thr[1:], 0.01 * neg[0] + 0.99 * S_THRESHOLDS[1:], atol=1e-6)


def test_thresholds_move_only_in_training_mode():
    _, _, s_thr, t_thr = run_term(ekd_cfg(), train=False)
    np.testing.assert_allclose(s_thr, S_THRESHOLDS, atol=1e-7)
    np.testing.assert_allclose(t_thr, T_THRESHOLDS, atol=1e-7)


def test_registry_rows_configs_and_checks():
    assert registry.method("ekd").needs.as_dict() == {"teacher": True, "emb": True}
    row = config.distill_table().ekd
    assert (row.ekd_pos_weight, row.ekd_neg_weight, row.ekd_temperature, row.ekd_momentum, row.ekd_topk) == \
        (0.02, 0.01, 0.01, 0.01, 2000)
    assert row.ekd_fpr_anchors == [10, 100, 1000, 10000, 100000, 1000000]
    for student in ("mfn", "mfnr"):
        assert config.config_by_name(f"{student}_ekd").distill == "ekd"
    for bad in (dict(ekd_temperature=0), dict(ekd_momentum=1.5), dict(ekd_topk=0), dict(ekd_fpr_anchors=[0.5])):
        with pytest.raises(InputError, match=next(iter(bad))):
            check(ekd_cfg(**bad))


def test_study_rows_plan_runs_of_both_methods(tmp_path):
    """``shrinkteanet reproduce --methods self,adadistill,ekd``: the study plans a train + eval stage of each."""
    from shrinkteanet.study import demo

    stages, runs = demo.plan(str(tmp_path), demo.get_scale("tiny"), students=("mfn", "mfnr"),
                             methods=("self", "adadistill", "ekd"))
    assert {(r["network"], r["method"]) for r in runs} == {(n, m) for n in ("mfn", "mfnr")
                                                          for m in ("self", "adadistill", "ekd")}
    assert demo.study_methods()["adadistill"] == ("adadistill", ()) and demo.study_methods()["ekd"] == ("ekd", ())
    configs = {s.commands[0][2] for s in stages if s.name.endswith(": train") and s.commands[0][:2] == ["train", "--config"]}
    assert {"mfn_adadistill", "mfnr_adadistill", "mfn_ekd", "mfnr_ekd"} <= configs


def test_batches_without_positive_or_negative_pairs():
    """No positive pair: ``ekd_pos`` is 0 (the authors' empty mean is NaN); one identity only: no
    negative pair, ``ekd_neg`` is 0 and the thresholds stay where they were."""
    cfg = ekd_cfg()
    for labels, empty in (([0, 1, 2, 3, 4, 5, 6], "ekd_pos"), ([5] * 7, "ekd_neg")):
        term = EKDTerm(types.SimpleNamespace(cfg=cfg, ctx=[mx.cpu()]))
        term.student_thresholds.set_data(mx.nd.array(S_THRESHOLDS))
        batch = StepViews(emb=mx.nd.array(STUDENT), taps=None, t_emb=mx.nd.array(TEACHER), t_taps=None,
                      label=mx.nd.array(labels))
        with autograd.record():
            parts = term(batch)
        assert np.isfinite(parts["ekd_pos"].asnumpy()).all() and np.isfinite(parts["ekd_neg"].asnumpy()).all()
        np.testing.assert_array_equal(parts[empty].asnumpy(), np.zeros(7))
        other = "ekd_neg" if empty == "ekd_pos" else "ekd_pos"
        assert parts[other].asnumpy()[0] > 0
    np.testing.assert_allclose(term.student_thresholds.data().asnumpy(), S_THRESHOLDS, atol=1e-7)
