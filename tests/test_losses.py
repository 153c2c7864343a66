"""Margin heads and distillation losses against independent numpy computations."""
import math

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.methods.base.blocks import (AngularDistillationLoss, HintLoss, KDLoss, L2EmbeddingLoss,
                                              MarginDistillationHead, MarginHead, margin_head)


def _unit(x):
    x = x.reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_angular(s, t):
    return (1.0 - np.sum(_unit(s) * _unit(t), axis=1)) ** 2


def _np_logits(emb, w, label, s, m1, m2, m3):
    """Combined margin logits written from the ArcFace/InsightFace formulas, float64."""
    cos = _unit(emb.astype(np.float64)) @ _unit(w.astype(np.float64)).T
    m2 = np.broadcast_to(np.asarray(m2, dtype=np.float64), (len(emb),))
    out = cos.copy()
    for i, y in enumerate(label):
        theta = math.acos(min(max(cos[i, y], -1 + 1e-6), 1 - 1e-6))
        if m1 * theta + m2[i] > math.pi:  # InsightFace's ArcFace fallback
            out[i, y] = cos[i, y] - m2[i] * math.sin(m2[i]) - m3
        else:
            out[i, y] = math.cos(m1 * theta + m2[i]) - m3
    return out * s


def _emb_at_angle(w_row, theta, rng):
    """A vector at exactly `theta` radians from `w_row` (random orthogonal direction)."""
    u = w_row / np.linalg.norm(w_row)
    v = rng.normal(size=u.shape)
    v -= v.dot(u) * u
    v /= np.linalg.norm(v)
    return (math.cos(theta) * u + math.sin(theta) * v) * 3.7


@pytest.mark.parametrize("hybrid", [False, True])
def test_angular_loss_matches_numpy(hybrid):
    rng = np.random.RandomState(0)
    s, t = rng.normal(size=(16, 128)).astype(np.float32), rng.normal(size=(16, 128)).astype(np.float32)
    t[:4] = s[:4] + 0.05 * t[:4]  # small angles too
    loss = AngularDistillationLoss()
    if hybrid:
        loss.hybridize()
    got = loss(mx.nd.array(s), mx.nd.array(t)).asnumpy()
    assert got.shape == (16,)
    np.testing.assert_allclose(got, _np_angular(s.astype(np.float64), t.astype(np.float64)), rtol=0, atol=1e-6)


def test_angular_loss_feature_maps_are_flattened():
    rng = np.random.RandomState(1)
    s, t = rng.normal(size=(3, 4, 5, 5)), rng.normal(size=(3, 4, 5, 5))
    got = AngularDistillationLoss()(mx.nd.array(s), mx.nd.array(t)).asnumpy()
    np.testing.assert_allclose(got, _np_angular(s, t), atol=1e-6)


def test_angular_loss_zero_when_parallel_and_four_when_opposite():
    rng = np.random.RandomState(2)
    t = rng.normal(size=(8, 64))
    scales = rng.uniform(0.01, 50.0, size=(8, 1))
    loss = AngularDistillationLoss()
    np.testing.assert_allclose(loss(mx.nd.array(t * scales), mx.nd.array(t)).asnumpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(loss(mx.nd.array(-t * scales), mx.nd.array(t)).asnumpy(), 4.0, atol=1e-5)


def test_angular_loss_gradient_matches_finite_differences():
    rng = np.random.RandomState(3)
    s, t = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    loss = AngularDistillationLoss(compute_dtype="float64")
    xs = mx.nd.array(s, dtype="float64")
    xt = mx.nd.array(t, dtype="float64")
    xs.attach_grad()
    xt.attach_grad()
    with mx.autograd.record():
        total = loss(xs, xt).sum()
    total.backward()
    grad = xs.grad.asnumpy()
    num = np.zeros_like(s)
    h = 1e-6
    for idx in np.ndindex(*s.shape):
        sp, sm = s.copy(), s.copy()
        sp[idx] += h
        sm[idx] -= h
        num[idx] = (_np_angular(sp, t).sum() - _np_angular(sm, t).sum()) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    # the teacher is the target: no gradient flows into it
    assert np.all(xt.grad.asnumpy() == 0)


def test_angular_loss_fp16_inputs_stay_finite():
    rng = np.random.RandomState(4)
    s = rng.normal(size=(4, 512)) * 40  # squared norm overflows float16 (> 65504)
    t = rng.normal(size=(4, 512)) * 40
    got = AngularDistillationLoss()(mx.nd.array(s, dtype="float16"), mx.nd.array(t, dtype="float16"))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.asnumpy(), _np_angular(s.astype(np.float16).astype(np.float64),
                                                          t.astype(np.float16).astype(np.float64)), atol=1e-5)


@pytest.mark.parametrize("name,m1,m2,m3", [("arcface", 1.0, 0.5, 0.0), ("cosface", 1.0, 0.0, 0.35),
                                           ("combined", 1.0, 0.3, 0.2), ("softmax", 1.0, 0.0, 0.0)])
def test_margin_head_logits_match_numpy(name, m1, m2, m3):
    rng = np.random.RandomState(5)
    classes, dim = 7, 16
    w = rng.normal(size=(classes, dim)).astype(np.float32)
    label = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    # target angles spanning the whole range, incl. theta + m > pi (2.8, 3.1 with m=0.5)
    thetas = [0.0, 0.3, 1.0, 1.6, 2.3, 2.8, 3.1, 2.65]
    emb = np.stack([_emb_at_angle(w[y], th, rng) for y, th in zip(label, thetas)]).astype(np.float32)
    head = MarginHead(classes, dim, s=64.0, m1=m1, m2=m2, m3=m3)
    head.initialize()
    head.weight.set_data(mx.nd.array(w))
    head.hybridize()
    got = head(mx.nd.array(emb), mx.nd.array(label)).asnumpy()
    want = _np_logits(emb, w, label, 64.0, m1, m2, m3)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)  # logits are ~64 in float32
    if name == "arcface":
        # the edge: theta=2.8 and 3.1 take the fallback cos(theta) - m sin(m), not cos(theta + m)
        for i in (5, 6):
            c = math.cos(thetas[i])
            assert abs(got[i, label[i]] - 64 * (c - 0.5 * math.sin(0.5))) < 2e-3
            assert abs(got[i, label[i]] - 64 * math.cos(thetas[i] + 0.5)) > 1.0
        # theta=2.3 < pi - m uses the true angular margin
        assert abs(got[4, 4] - 64 * math.cos(2.3 + 0.5)) < 2e-3


def test_margin_head_name_init_and_build_from_config():
    from shrinkteanet.training.config import generate_config
    cfg = generate_config("mfn", "synth", "cosface", "none")
    head = margin_head(cfg, num_classes=11, emb_size=8)
    assert (head.s, head.m1, head.m2, head.m3) == (64.0, 1.0, 0.0, 0.35)
    assert list(head.collect_params().keys()) == ["fc7_weight"]
    assert head.weight.shape == (11, 8) and head.weight.grad_req == "write"
    teacher = margin_head(cfg, num_classes=11, emb_size=16, fixed=True, prefix="teacher_fc7_")
    assert list(teacher.collect_params().keys()) == ["teacher_fc7_weight"] and teacher.weight.grad_req == "null"


def test_margin_head_gradient_finite_at_zero_angle_and_fp16():
    rng = np.random.RandomState(6)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    emb = w[[0, 1, 2]] * 2.0  # cos = 1 exactly: arccos' would be infinite without clipping
    head = MarginHead(3, 8, s=64.0, m2=0.5)
    head.initialize()
    head.weight.set_data(mx.nd.array(w))
    for dtype in ("float32", "float16"):
        x = mx.nd.array(emb, dtype=dtype)
        x.attach_grad()
        if dtype == "float16":
            head.cast("float16")
        with mx.autograd.record():
            logits = head(x, mx.nd.array([0, 1, 2]))
            loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(logits, mx.nd.array([0, 1, 2]))
        loss.backward()
        assert logits.dtype == np.float32
        assert np.all(np.isfinite(x.grad.asnumpy().astype(np.float32)))
        assert np.all(np.isfinite(head.weight.grad().asnumpy().astype(np.float32)))
        np.testing.assert_allclose(logits.asnumpy()[np.arange(3), [0, 1, 2]], 64 * math.cos(0.5), atol=0.05)


def test_margin_distillation_margins_and_logits_match_numpy():
    rng = np.random.RandomState(7)
    classes, dim, batch = 5, 12, 6
    centres = rng.normal(size=(classes, dim))
    label = np.array([0, 1, 2, 3, 4, 1])
    t_angles = [0.2, 0.5, 0.9, 1.2, 1.4, 1.7]  # last one: cos < 0 -> clipped to 0, margin Mmin
    teacher = np.stack([_emb_at_angle(centres[y], a, rng) for y, a in zip(label, t_angles)])
    student = rng.normal(size=(batch, dim))
    head = MarginDistillationHead(classes, dim, s=64.0, m_min=0.2, m_max=0.5)
    head.initialize()
    head.weight.set_data(mx.nd.array(centres))
    head.hybridize()
    d = np.maximum(np.cos(t_angles), 0.0)
    want_m = 0.2 + (0.5 - 0.2) * d / d.max()
    got_m = head.margins(mx.nd, mx.nd.array(teacher), mx.nd.array(label), head.weight.data()).asnumpy()
    np.testing.assert_allclose(got_m, want_m, atol=1e-6)
    assert abs(got_m[0] - 0.5) < 1e-6 and abs(got_m[-1] - 0.2) < 1e-6
    x = mx.nd.array(student)
    x.attach_grad()
    with mx.autograd.record():
        logits = head(x, mx.nd.array(label), mx.nd.array(teacher))
    logits.backward()
    np.testing.assert_allclose(logits.asnumpy(), _np_logits(student, centres, label, 64.0, 1.0, want_m, 0.0),
                               atol=2e-3)
    assert head.weight.grad_req == "null"
    assert np.abs(x.grad.asnumpy()).sum() > 0


def test_l2_hint_kd_match_numpy():
    rng = np.random.RandomState(8)
    s, t = rng.normal(size=(5, 3, 4, 4)), rng.normal(size=(5, 3, 4, 4))
    np.testing.assert_allclose(L2EmbeddingLoss()(mx.nd.array(s), mx.nd.array(t)).asnumpy(),
                               ((s - t) ** 2).reshape(5, -1).sum(1), rtol=1e-5)
    np.testing.assert_allclose(HintLoss()(mx.nd.array(s), mx.nd.array(t)).asnumpy(),
                               ((s - t) ** 2).reshape(5, -1).mean(1), rtol=1e-5)
    zs, zt = rng.normal(size=(5, 9)) * 10, rng.normal(size=(5, 9)) * 10
    T = 4.0

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ls, lt = log_softmax(zs / T), log_softmax(zt / T)
    want = T * T * (np.exp(lt) * (lt - ls)).sum(1)
    kd = KDLoss(T)
    kd.hybridize()
    np.testing.assert_allclose(kd(mx.nd.array(zs), mx.nd.array(zt)).asnumpy(), want, rtol=1e-5)
    np.testing.assert_allclose(kd(mx.nd.array(zt), mx.nd.array(zt)).asnumpy(), 0.0, atol=1e-5)
