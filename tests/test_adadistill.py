"""AdaDistill (``methods/adadistill.py``, ``methods/base/adadistill_head.py``): the EMA step of the class
centres, the margin-softmax loss on them and its gradient, against an independent numpy computation
of the paper's update (Boutros et al. 2024, as the authors' ``AdaptiveAArcFace`` computes it), to 1e-5."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from shrinkteanet.methods.base import registry
from shrinkteanet.methods.base.adadistill_head import AdaDistillHead
from shrinkteanet.training import config

# a hand-worked batch: 4 classes, 3-d embeddings, class 2 twice (samples 0 and 2)
LABELS = [2, 0, 2, 1]
W0 = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
STUDENT = np.array([[1.0, 0.0, 0.0], [0.2, 0.1, 0.9], [0.3, 0.8, 0.1], [0.6, 0.4, 0.3]])
TEACHER = np.array([[1.0, 1.0, 0.0], [0.0, 0.2, 1.0], [0.1, 1.0, 0.3], [0.7, 0.2, 0.2]])


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_centres(w, s, t, labels, weighted=True):
    """The update written out sample by sample: alpha from the centre before the step, then an
    assignment per sample in batch order (so the last sample of a class stays)."""
    out = w.copy()
    alphas = []
    for i, y in enumerate(labels):
        a = float(np.clip(unit(s[i]) @ unit(t[i]), -1, 1))
        if weighted:
            a *= float(np.clip(unit(w[y]) @ unit(t[i]), 1e-6, 1))
        a = float(np.clip(a, 1e-6, 1))
        alphas.append(a)
        out[y] = a * w[y] + (1 - a) * unit(t[i])
    return out, np.array(alphas)


def numpy_loss(s, centres, labels, scale, m2, m3):
    """Per-sample softmax cross-entropy of the margin logits (ArcFace m2 / CosFace m3)."""
    cos = unit(s) @ unit(centres).T
    logits = scale * cos
    for i, y in enumerate(labels):
        logits[i, y] = scale * (math.cos(math.acos(cos[i, y]) + m2) - m3)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return lse - logits[np.arange(len(labels)), labels]


def numpy_grad(s, centres, labels, scale, m2, m3, eps=1e-6):
    """d(sum of the losses)/d(student embedding) by central differences (float64, centres fixed:
    the update carries no gradient)."""
    g = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        hi, lo = s.copy(), s.copy()
        hi[idx] += eps
        lo[idx] -= eps
        g[idx] = (numpy_loss(hi, centres, labels, scale, m2, m3).sum()
                  - numpy_loss(lo, centres, labels, scale, m2, m3).sum()) / (2 * eps)
    return g


def run_head(weighted=True, scale=64.0, m2=0.45, m3=0.0, train=True):
    head = AdaDistillHead(4, 3, s=scale, m2=m2, m3=m3, weighted=weighted)
    head.initialize()
    head.weight.set_data(mx.nd.array(W0))
    s = mx.nd.array(STUDENT)
    s.attach_grad()
    label = mx.nd.array(LABELS)
    ce = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record(train_mode=train):
        loss = ce(head(s, label, mx.nd.array(TEACHER)), label)
    loss.backward()
    return loss.asnumpy(), s.grad.asnumpy(), head.weight.data().asnumpy()


def test_hand_worked_centre_of_sample_zero():
    """Sample 0 by hand: cos(s, t) = 1/sqrt2, cos(c_2, t) = 1/sqrt2, so alpha = 1/2 and the centre
    becomes (0, 1, 0)/2 + (1, 1, 0)/(2 sqrt2); sample 2 of the same class then writes its own."""
    centres, alphas = numpy_centres(W0, STUDENT, TEACHER, [2])
    assert alphas[0] == pytest.approx(0.5)
    r = 1 / (2 * math.sqrt(2))
    np.testing.assert_allclose(centres[2], [r, 0.5 + r, 0.0], atol=1e-12)


@pytest.mark.parametrize("weighted,m2,m3", [(True, 0.45, 0.0), (False, 0.45, 0.0), (True, 0.0, 0.35)],
                         ids=["AdaArcDistill", "unweighted", "AdaCosDistill"])
def test_centres_loss_and_gradient_match_numpy(weighted, m2, m3):
    loss, grad, centres = run_head(weighted=weighted, m2=m2, m3=m3)
    want_centres, _ = numpy_centres(W0, STUDENT, TEACHER, LABELS, weighted)
    np.testing.assert_allclose(centres, want_centres, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(centres[3], W0[3])  # class 3 is not in the batch: untouched
    np.testing.assert_allclose(loss, numpy_loss(STUDENT, want_centres, LABELS, 64.0, m2, m3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, numpy_grad(STUDENT, want_centres, LABELS, 64.0, m2, m3), rtol=1e-5, atol=1e-5)


def test_duplicate_class_keeps_the_last_sample_and_weighting_matters():
    _, _, centres = run_head()
    _, alphas = numpy_centres(W0, STUDENT, TEACHER, LABELS)
    # sample 2 (the last of class 2) wrote from the centre before the step, not after sample 0
    np.testing.assert_allclose(centres[2], alphas[2] * W0[2] + (1 - alphas[2]) * unit(TEACHER[2]), atol=1e-6)
    assert not np.allclose(run_head(weighted=False)[2], centres)


def test_no_update_outside_training_mode():
    """The trainer's shape pass on zeros and evaluation run in predict mode: centres stay."""
    _, _, centres = run_head(train=False)
    np.testing.assert_array_equal(centres, W0.astype(np.float32))


def test_registry_rows_and_configs():
    assert registry.method("adadistill").needs.as_dict() == {"teacher": True, "emb": True}
    row = config.distill_table().adadistill
    assert (row.loss, row.margin_s, row.margin_m2, row.margin_m3, row.adadistill_weighted) == \
        ("arcface", 64.0, 0.45, 0.0, True)
    cos = config.distill_table().adadistill_cos
    assert (cos.loss, cos.margin_m2, cos.margin_m3) == ("cosface", 0.0, 0.35)
    for student in ("mfn", "mfnr"):
        cfg = config.config_by_name(f"{student}_adadistill")
        assert cfg.distill == "adadistill" and cfg.margin_m2 == 0.45
    assert "adadistill" in {r.key for r in registry.study_rows()}
