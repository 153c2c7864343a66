"""AdaDistill's classifier (Boutros, Struc, Damer, ECCV 2024, arXiv 2407.01332): a margin head
whose class centres are not learned but distilled from the teacher, as an exponential moving
average of the teacher's normalised embeddings (imported by ``methods.adadistill``'s builder).

Per training step, before the logits (the order of the authors' ``AdaptiveAArcFace`` /
``AdaptiveACosFace``, ``utils/losses.py`` of ``fdbtrs/AdaDistill``), for each sample i of class y::

    a_i      = cos(s_i, t_i)                                    (student-teacher agreement)
    lambda_i = clip(cos(c_y, t_i), 1e-6, 1)                     (the teacher's sample vs its centre)
    alpha_i  = clip(a_i * lambda_i, 1e-6, 1)   (weighted; unweighted: clip(a_i, 1e-6, 1))
    c_y     <- alpha_i * c_y + (1 - alpha_i) * t_i / |t_i|

then the ArcFace (or CosFace) logits of the student embedding against the normalised centres,
and softmax cross-entropy.  Early in training the student disagrees with its teacher (small
alpha), so a centre is close to the teacher's embedding of the last sample: sample-to-sample
knowledge; as the student aligns (alpha -> 1) the centre averages the teacher's view of the
class: sample-to-centre knowledge.  The weighting by ``lambda`` moves a centre further towards a
teacher sample the teacher itself puts far from it.  Neither alpha nor the centres carry
gradient: only the student's embedding is trained (the authors keep the head out of the
optimiser).

Departures, each to keep a documented behaviour of this package:

* one write per class and step: with several samples of a class in the batch, each computed
  from the centre before the step, the batch's *last* such sample sets the centre (the
  authors' ``kernel[:, label] = ...`` keeps one of them, which one unspecified on CUDA);
* the ArcFace target past ``theta + m > pi`` falls back as InsightFace's (``blocks._target_cos``),
  where the authors' head takes ``cos(theta + m)`` as is; arccos inputs are clipped 1e-6 from +-1;
* updates happen in training mode only (``autograd.is_training()``), so the trainer's shape
  pass on zeros and evaluation never move a centre;
* on several devices each keeps its own copy of the centres, updated from its share of the
  batch, as the authors' DistributedDataParallel run (the head's kernel gets no gradient, so
  no all-reduce ever syncs it); checkpoints save the first device's copy as ``fc7_weight``.
"""
import mxnet as mx
from mxnet import autograd

from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.base.blocks import NORM_EPS, MarginHead

#: the authors' clamp floor of lambda and alpha: a centre always moves a little
ALPHA_MIN = 1e-6


def unit_rows(x):
    """Rows of ``x`` divided by their L2 norm (float32)."""
    x = x.astype("float32", copy=False)
    return mx.nd.broadcast_div(x, mx.nd.sqrt(mx.nd.sum(mx.nd.square(x), axis=1, keepdims=True) + NORM_EPS))


def ema_momentum(student, teacher, centres, weighted=True):
    """alpha_i (batch,) of the module docstring from the student and teacher embeddings and the
    current centres of the samples' classes (all (batch, D))."""
    t = unit_rows(teacher)
    agree = mx.nd.clip(mx.nd.sum(unit_rows(student) * t, axis=1), -1.0, 1.0)
    if weighted:
        agree = agree * mx.nd.clip(mx.nd.sum(unit_rows(centres) * t, axis=1), ALPHA_MIN, 1.0)
    return mx.nd.clip(agree, ALPHA_MIN, 1.0)


def last_of_class(label):
    """(batch, batch) float: row i is one-hot at the batch's last sample with i's label, so that
    ``dot(last_of_class(label), values)`` gives every sample of a class the same value."""
    n = int(label.shape[0])
    lab = label.astype("float32", copy=False)
    same = mx.nd.broadcast_equal(lab.reshape((-1, 1)), lab.reshape((1, -1)))
    pos = mx.nd.arange(n, ctx=label.context)
    later = mx.nd.broadcast_lesser(pos.reshape((-1, 1)), pos.reshape((1, -1)))  # [j < k]
    last = 1 - mx.nd.max(same * later, axis=1)  # 1 where no later sample shares the label
    return same * last.reshape((1, -1))


def update_centres(weight, student, teacher, label, weighted=True):
    """EMA step of the class centres ``weight`` (classes, D), in place; returns alpha (batch,)."""
    idx = label.astype("int32")
    old = mx.nd.take(weight, idx, axis=0).astype("float32", copy=False)
    alpha = ema_momentum(student, teacher, old, weighted).reshape((-1, 1))
    new = mx.nd.broadcast_mul(alpha, old) + mx.nd.broadcast_mul(1 - alpha, unit_rows(teacher))
    weight[idx] = mx.nd.dot(last_of_class(label), new).astype(weight.dtype, copy=False)
    return alpha.reshape((-1,))


class AdaDistillHead(MarginHead):
    """``forward(emb, label, teacher_emb) -> logits``: the EMA step of the centres (training mode
    only), then ``MarginHead``'s logits (``s``, ``m1``, ``m2``, ``m3``: ArcFace or CosFace) on the
    new centres.  The weight ``fc7_weight`` starts as the authors' kernel, N(0, 0.01), and never
    gets gradient; ``weighted``: alpha times lambda (the authors' ``adaptive_alpha=True``)."""

    def __init__(self, num_classes, emb_size, *, s=64.0, m1=1.0, m2=0.45, m3=0.0, weighted=True, prefix="fc7_"):
        super().__init__(num_classes, emb_size, s=s, m1=m1, m2=m2, m3=m3, fixed=True, prefix=prefix)
        self.weighted = bool(weighted)

    def forward(self, emb, label, teacher_emb):
        if int(teacher_emb.shape[1]) != self.emb_size:
            raise InputError(f"distill=adadistill: the teacher's embedding is {teacher_emb.shape[1]}-d, "
                             f"emb_size={self.emb_size}; the teacher's embeddings are the student's class "
                             "centres, so emb_size must equal the teacher's")
        if autograd.is_training():
            with autograd.pause():
                update_centres(self.weight.data(emb.context), emb, teacher_emb, label, self.weighted)
        return super().forward(emb, label)
