"""Classification heads and distillation losses as Gluon HybridBlocks.

Margin heads follow InsightFace's combined margin (``recognition/train.py``,
``loss_m1/m2/m3``): both the embedding and the class weights ``fc7_weight`` are
L2-normalised, the logit of class c is ``s * cos(theta_c)`` and the logit of the
label class is ``s * (cos(m1 * theta_y + m2) - m3)``.  softmax = (1, 0, 0) on the
normalised features (NormFace), ArcFace = (1, 0.5, 0), CosFace = (1, 0, 0.35).

Distillation losses return one value per sample, so that a trainer can average,
weight and report each part on its own:

* ``AngularDistillationLoss`` - Eq. 4 of ShrinkTeaNet (Duong et al. 2019),
  ``(1 - <s/|s|, t/|t|>)**2`` with identity transforms G (Sec. 3.1).
* ``L2EmbeddingLoss``        - ``||s - t||^2``, the "Student-1" baseline (Sec. 4.3).
* ``KDLoss``                 - Hinton et al. 2015 soft targets with temperature T.
* ``HintLoss``               - FitNets (Romero et al. 2015) feature regression.
* ``MarginDistillationHead`` - MarginDistillation (Svitov & Alyamkin 2020): fixed
  teacher class centres and a per-sample ArcFace margin from the teacher's angle.

Numerics: every head and loss computes in float32 (``compute_dtype``) even when the
network runs in float16, cosines are clipped to ``[-1 + 1e-6, 1 - 1e-6]`` before
``arccos`` (whose gradient is infinite at +-1), and norms carry an epsilon.
"""
import math

import mxnet as mx
from mxnet.gluon import HybridBlock

#: Cosines are kept this far from +-1 before arccos (finite gradient in float32).
COS_EPS = 1e-6
#: Added to squared norms before the square root (zero vectors stay finite).
NORM_EPS = 1e-12


def _normalize_rows(F, x):
    """x / ||x|| per row; rows are flattened first (feature maps work too)."""
    x = F.reshape(x, shape=(0, -1))
    norm = F.sqrt(F.sum(F.square(x), axis=1, keepdims=True) + NORM_EPS)
    return F.broadcast_div(x, norm)


def _target_cos(F, cos_y, m1, m2, m3):
    """Margin-modified target cosine of InsightFace's combined margin.

    ``cos(m1*theta + m2) - m3`` where ``theta = arccos(cos_y)``.  When
    ``m1*theta + m2 > pi`` the cosine is no longer decreasing in theta, so, as
    InsightFace's ArcFace (``loss_type=4``, ``easy_margin=False``) does, the target
    falls back to ``cos(theta) - m2*sin(m2) - m3``.  ``m2`` may be a float or a
    per-sample array (MarginDistillation).
    """
    per_sample = not isinstance(m2, (int, float))
    if not per_sample and m1 == 1.0 and m2 == 0.0:
        return cos_y - m3  # CosFace / plain: no arccos, no clipping needed
    c = F.clip(cos_y, -1.0 + COS_EPS, 1.0 - COS_EPS)
    theta = F.arccos(c)
    angle = theta * m1 + m2 if m1 != 1.0 else theta + m2
    body = F.cos(angle) - m3
    mm = m2 * F.sin(m2) if per_sample else m2 * math.sin(m2)
    fallback = cos_y - mm - m3
    return F.where(angle > math.pi, fallback, body)


class MarginHead(HybridBlock):
    """Normalised classifier with InsightFace's combined margin (m1, m2, m3).

    ``forward(emb, label) -> logits (batch, num_classes)`` in float32: ``s*cos`` for
    every class, the label class with the margin applied (see ``_target_cos``).
    The weight is ``fc7_weight`` (shape ``(num_classes, emb_size)``, InsightFace's name
    and ``Normal(0.01)`` init), so checkpoints exchange it with InsightFace.
    ``fixed=True`` freezes the weight (``grad_req='null'``).
    """

    def __init__(self, num_classes, emb_size, s=64.0, m1=1.0, m2=0.0, m3=0.0, fixed=False,
                 weight_initializer=None, compute_dtype="float32", prefix="fc7_", params=None):
        super().__init__(prefix=prefix, params=params)
        self.num_classes = int(num_classes)
        self.emb_size = int(emb_size)
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.compute_dtype = compute_dtype
        with self.name_scope():
            self.weight = self.params.get(
                "weight", shape=(self.num_classes, self.emb_size),
                init=weight_initializer or mx.init.Normal(0.01),
                grad_req="null" if fixed else "write")

    def cosines(self, F, emb, weight):
        """cos(theta) between every embedding and every class centre, (batch, classes).

        A ``linalg_gemm2`` rather than a FullyConnected: AMP (``--fp16``) casts every
        FullyConnected to float16 but keeps ``linalg_gemm2`` in float32, and these cosines, the
        margin and the softmax over all classes are what must stay float32."""
        emb = F.cast(F.reshape(emb, shape=(0, -1)), self.compute_dtype)
        weight = F.cast(weight, self.compute_dtype)
        return F.linalg.gemm2(_normalize_rows(F, emb), _normalize_rows(F, weight), transpose_b=True)

    def _with_margin(self, F, cos, label, m2):
        label = F.cast(label, self.compute_dtype)
        cos_y = F.pick(cos, label, axis=1)
        target = _target_cos(F, cos_y, self.m1, m2, self.m3)
        one_hot = F.one_hot(label, depth=self.num_classes, dtype=self.compute_dtype)
        return F.broadcast_add(cos, F.broadcast_mul(one_hot, F.expand_dims(target - cos_y, axis=1))) * self.s

    def hybrid_forward(self, F, emb, label, weight):
        return self._with_margin(F, self.cosines(F, emb, weight), label, self.m2)


class MarginDistillationHead(MarginHead):
    """MarginDistillation (Svitov & Alyamkin 2020, paper 003): the student's classifier
    is the teacher's fixed, normalised class centres (its ``fc7_weight``) and each
    sample gets its own ArcFace margin from the teacher's view of that sample.

    Rule, as in the authors' MXNet code (david-svitov/margindistillation,
    ``train.py``, ``loss_name == 'margin_distillation'``, ``Mmin=0.2``, ``Mmax=0.5``):
    ``d_j = cos(teacher_emb_j, W_{y_j})``, ``D = max_j d_j`` over the batch and
    ``m_j = Mmin + (Mmax - Mmin) * d_j / D``, used as ``m2`` of ArcFace.  Samples the
    teacher puts close to their centre get the large margin, hard ones a small one,
    so the student learns the teacher's angles.  Only where the authors' code would
    go outside ``[0, Mmax]`` (``d_j < 0``, or ``D <= 0``) is ``d_j`` clipped at 0 here.

    ``D`` is the maximum over the batch this head is called with: in a multi-device run, over
    one device's share of the global batch (the training loop calls the method once per
    device), so the margins depend a little on the number of devices (issue 24: not yet global).

    ``forward(emb, label, teacher_emb) -> logits``.  The weight never gets gradient.
    """

    def __init__(self, num_classes, emb_size, s=64.0, m_min=0.2, m_max=0.5, compute_dtype="float32",
                 prefix="fc7_", params=None):
        super().__init__(num_classes, emb_size, s=s, m1=1.0, m2=0.0, m3=0.0, fixed=True,
                         compute_dtype=compute_dtype, prefix=prefix, params=params)
        self.m_min, self.m_max = float(m_min), float(m_max)

    def margins(self, F, teacher_emb, label, weight):
        """Per-sample margins (batch,) from the teacher embedding and its class centre."""
        weight = F.cast(weight, self.compute_dtype)
        centres = F.take(_normalize_rows(F, weight), F.cast(label, "int32"), axis=0)
        t = _normalize_rows(F, F.cast(F.stop_gradient(teacher_emb), self.compute_dtype))
        d = F.relu(F.sum(t * centres, axis=1))
        d_max = F.max(d) + NORM_EPS
        return F.broadcast_div(d, d_max) * (self.m_max - self.m_min) + self.m_min

    def hybrid_forward(self, F, emb, label, teacher_emb, weight):
        m = F.stop_gradient(self.margins(F, teacher_emb, label, weight))
        return self._with_margin(F, self.cosines(F, emb, weight), label, m)


class _PairLoss(HybridBlock):
    """Per-sample loss between a student output and its teacher target.

    The teacher side is detached by default (it is the target, never updated) and
    both sides are cast to ``compute_dtype`` so that fp16 networks still get float32
    loss arithmetic.  Subclasses define ``pair(F, student, teacher) -> (batch,)``.
    """

    def __init__(self, detach_teacher=True, compute_dtype="float32", prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self.detach_teacher = detach_teacher
        self.compute_dtype = compute_dtype

    def hybrid_forward(self, F, student, teacher):
        if self.detach_teacher:
            teacher = F.stop_gradient(teacher)
        return self.pair(F, F.cast(student, self.compute_dtype), F.cast(teacher, self.compute_dtype))

    def pair(self, F, student, teacher):
        raise NotImplementedError


class AngularDistillationLoss(_PairLoss):
    """Angular Distillation Loss, Eq. 4 of ShrinkTeaNet: ``(1 - cos(s, t))**2`` per sample.

    ``loss(student_emb, teacher_emb) -> (batch,)``.  Both inputs are flattened per
    sample, so the loss applies to embeddings and feature maps alike; the transforms
    G are the identity (Sec. 3.1: only the direction of the teacher feature is
    distilled, the magnitude is free).  ``detach_teacher`` (default) blocks the
    gradient into the teacher side: the teacher is the target, never updated.
    """

    def pair(self, F, student, teacher):
        s = _normalize_rows(F, student)
        t = _normalize_rows(F, teacher)
        return F.square(1.0 - F.sum(s * t, axis=1))


class L2EmbeddingLoss(_PairLoss):
    """Squared Euclidean distance ``||s - t||^2`` per sample (ShrinkTeaNet's "Student-1"
    baseline, Sec. 4.3, weighted 0.001 in the paper because the value is large)."""

    def pair(self, F, student, teacher):
        return F.sum(F.square(F.reshape(student - teacher, shape=(0, -1))), axis=1)


class HintLoss(_PairLoss):
    """FitNets hint loss (Romero et al. 2015): mean squared difference per sample
    between the (adapted) student feature map and the teacher's.  The mean over
    elements, rather than FitNets' half sum, keeps stages of different size on one
    scale."""

    def pair(self, F, student, teacher):
        return F.mean(F.square(F.reshape(student - teacher, shape=(0, -1))), axis=1)


class KDLoss(_PairLoss):
    """Hinton et al. 2015 knowledge distillation on logits, per sample:
    ``T^2 * KL(softmax(t/T) || softmax(s/T))``.  The ``T^2`` factor keeps the gradient
    scale independent of T (Hinton et al., Sec. 2)."""

    def __init__(self, temperature=4.0, detach_teacher=True, compute_dtype="float32", prefix=None,
                 params=None):
        super().__init__(detach_teacher=detach_teacher, compute_dtype=compute_dtype, prefix=prefix,
                         params=params)
        self.temperature = float(temperature)

    def pair(self, F, student_logits, teacher_logits):
        inv_t = 1.0 / self.temperature
        log_p_s = F.log_softmax(student_logits * inv_t, axis=1)
        log_p_t = F.log_softmax(teacher_logits * inv_t, axis=1)
        kl = F.sum(F.exp(log_p_t) * (log_p_t - log_p_s), axis=1)
        return kl * (self.temperature ** 2)


def margin_params(cfg):
    """(s, m1, m2, m3) of the config's margin head (``LOSSES`` rows of config.py)."""
    return float(cfg.margin_s), float(cfg.margin_m1), float(cfg.margin_m2), float(cfg.margin_m3)


def margin_head(cfg, num_classes, emb_size, *, fixed=False, prefix="fc7_"):
    """The one builder of a config's margin head: ``MarginHead`` of ``cfg.loss`` (softmax | arcface |
    cosface | combined: ``margin_s``, ``margin_m1..3``) over ``num_classes`` centres of width
    ``emb_size``; the student's head (``fc7_``) or, ``fixed``, a teacher's (soft targets)."""
    s, m1, m2, m3 = margin_params(cfg)
    return MarginHead(num_classes, emb_size, s=s, m1=m1, m2=m2, m3=m3, fixed=fixed, prefix=prefix)
