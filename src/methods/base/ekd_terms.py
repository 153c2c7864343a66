"""EKD's term (Huang, Wu, Xu, Ding, CVPR 2022; code ``Tencent/TFace``,
``recognition/tasks/ekd/distillation/ekd.py``), imported by ``methods.ekd``'s builder.

Within the batch, every pair (i < j) has a cosine similarity in the student, S_ij, and in the
teacher, T_ij.  The evaluation's thresholds at the false-positive rates 1/a (a in ``anchors``:
FPR 1e-1 .. 1e-6) are the negative-pair similarities of rank floor(N_neg / a) (descending),
kept as exponential moving averages per network (momentum ``momentum``), so that::

    r_S(p) = sum_k sigmoid((S_p - theta^S_k) / tau)        r_T(p) likewise with theta^T_k

counts, smoothly, how many thresholds a pair passes: its rank against the evaluation's
operating points.  The critical pairs are every positive pair (they decide the TPR) and the
``topk`` negative pairs most similar in the student (they decide the FPR)::

    L_pos = mean_{p positive} (r_S(p) - r_T(p))^2      L_neg = mean_{p in top-k negatives} (...)^2

and the loss is ``w_pos * L_pos + w_neg * L_neg`` beside the classifier's softmax.  As the
authors' code: the thresholds are updated first (no gradient), then the loss uses them; the
sigmoid's exponent is clipped to [-50, 50]; the teacher side carries no gradient.  A batch with
no positive (or no negative) pair gives 0 for that part (the authors' mean over an empty set is
NaN; their sampler puts 8 identities x 4 images in every batch of 64).  Parts ``ekd_pos`` /
``ekd_neg`` are batch values, given to every sample of the batch (their mean is the value).
On several devices each computes its pairs and thresholds on its share of the batch (the
authors gather every GPU's features first).
"""
from collections import OrderedDict

import numpy as np
import mxnet as mx
from mxnet import autograd

from shrinkteanet.methods.base.adadistill_head import unit_rows
from shrinkteanet.methods.base.terms import Term

#: the authors' clamp of the sigmoid's exponent
EXPONENT_CLIP = 50.0
#: below any cosine: what a pair outside the set being ranked sorts as
OUTSIDE = -3.0


def rank_counts(sim, thresholds, tau):
    """r(p) of the module docstring: (pairs,) similarities against (K,) thresholds."""
    x = mx.nd.broadcast_sub(sim.reshape((-1, 1)), thresholds.reshape((1, -1))) / tau
    return mx.nd.sum(1.0 / (1.0 + mx.nd.exp(mx.nd.clip(-x, -EXPONENT_CLIP, EXPONENT_CLIP))), axis=1)


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` is 1; 0 for an empty mask (shape (1,))."""
    return mx.nd.sum(values * mask, keepdims=True).reshape((1,)) / mx.nd.maximum(mx.nd.sum(mask), 1.0)


def fpr_thresholds(sim, negative, denominators):
    """The negative-pair similarities of rank floor(N_neg / a), descending, for each a (K,)."""
    ranked = mx.nd.sort(mx.nd.where(negative > 0, sim, mx.nd.ones_like(sim) * OUTSIDE), is_ascend=False)
    index = mx.nd.floor(mx.nd.sum(negative) / denominators)
    return mx.nd.take(ranked, index), mx.nd.sum(negative)


class EKDTerm(Term):
    """Parts ``ekd_pos`` and ``ekd_neg`` of ``cfg``: ``ekd_pos_weight``, ``ekd_neg_weight``,
    ``ekd_temperature`` (tau), ``ekd_momentum``, ``ekd_topk``, ``ekd_fpr_anchors`` (the a's).
    The thresholds are parameters without gradient (``ekd_student_thresholds``,
    ``ekd_teacher_thresholds``, start 0 as the authors' buffers), so checkpoints keep them."""

    def __init__(self, build):
        super().__init__()
        cfg = build.cfg
        self.weights["ekd_pos"] = float(cfg.ekd_pos_weight)
        self.weights["ekd_neg"] = float(cfg.ekd_neg_weight)
        self.tau, self.momentum, self.topk = float(cfg.ekd_temperature), float(cfg.ekd_momentum), int(cfg.ekd_topk)
        self.denominators = [float(a) for a in cfg.ekd_fpr_anchors]
        k = len(self.denominators)
        self.student_thresholds = self.params.get("ekd_student_thresholds", shape=(k,), init=mx.init.Zero(),
                                                  grad_req="null")
        self.teacher_thresholds = self.params.get("ekd_teacher_thresholds", shape=(k,), init=mx.init.Zero(),
                                                  grad_req="null")
        self.collect_params().initialize(ctx=build.ctx)
        self._pairs = {}

    def pair_index(self, n, ctx):
        """Flat indices (i * n + j, i < j) of the upper triangle, per batch size and device."""
        key = (n, str(ctx))
        if key not in self._pairs:
            i, j = np.triu_indices(n, 1)
            self._pairs[key] = mx.nd.array(i * n + j, ctx=ctx, dtype="int32")
        return self._pairs[key]

    def pairs(self, batch):
        """(S, T, positive) over the pairs i < j of the batch, each (pairs,)."""
        s = unit_rows(batch.emb)
        t = unit_rows(mx.nd.stop_gradient(batch.t_emb))
        index = self.pair_index(int(s.shape[0]), s.context)
        lab = batch.label.astype("float32", copy=False)
        same = mx.nd.broadcast_equal(lab.reshape((-1, 1)), lab.reshape((1, -1)))
        return (mx.nd.take(mx.nd.dot(s, s, transpose_b=True).reshape((-1,)), index),
                mx.nd.take(mx.nd.dot(t, t, transpose_b=True).reshape((-1,)), index),
                mx.nd.take(same.reshape((-1,)), index))

    def update_thresholds(self, s_sim, t_sim, negative):
        """EMA step of both threshold sets from this batch (training mode; no gradient)."""
        den = mx.nd.array(self.denominators, ctx=s_sim.context)
        for param, sim in ((self.student_thresholds, s_sim), (self.teacher_thresholds, t_sim)):
            now, n_neg = fpr_thresholds(mx.nd.stop_gradient(sim), negative, den)
            old = param.data(sim.context)
            new = self.momentum * now + (1 - self.momentum) * old
            # a batch of one identity has no negative pair: its thresholds stay
            old[:] = mx.nd.where(mx.nd.broadcast_mul(n_neg, mx.nd.ones_like(old)) > 0, new, old)

    def forward(self, batch):
        s_sim, t_sim, positive = self.pairs(batch)
        negative = 1 - positive
        if autograd.is_training():
            with autograd.pause():
                self.update_thresholds(s_sim, t_sim, negative)
        ctx = s_sim.context
        diff = mx.nd.square(rank_counts(s_sim, self.student_thresholds.data(ctx), self.tau)
                            - rank_counts(t_sim, self.teacher_thresholds.data(ctx), self.tau))
        k = min(self.topk, int(s_sim.shape[0]))
        key = mx.nd.stop_gradient(mx.nd.where(negative > 0, s_sim, mx.nd.ones_like(s_sim) * OUTSIDE))
        hard = mx.nd.topk(key, k=k, ret_typ="indices", is_ascend=False)
        l_pos = masked_mean(diff, positive)
        l_neg = masked_mean(mx.nd.take(diff, hard), mx.nd.take(negative, hard))
        ones = mx.nd.ones((int(batch.emb.shape[0]),), ctx=ctx)
        return OrderedDict([("ekd_pos", mx.nd.broadcast_mul(ones, l_pos) * self.weights["ekd_pos"]),
                            ("ekd_neg", mx.nd.broadcast_mul(ones, l_neg) * self.weights["ekd_neg"])])
