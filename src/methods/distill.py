"""ShrinkTeaNet and the teacher-student methods it is compared with, as one Gluon block.

``build_method(cfg, student, teacher, num_classes)`` returns a ``Method`` whose call
``method(data, label, teacher_emb=None)`` gives a dict of named, already-weighted
per-sample loss parts; their sum is the training objective.  ``cfg.distill`` selects:

=============  =================================================================================
``none``       self-studied student: ``softmax`` (the margin head of ``cfg.loss``).
``stn``        ShrinkTeaNet (Duong et al. 2019, Eq. 7): ``softmax`` + ``angular_i`` for i in
               ``cfg.distill_stages`` (config ``*_stn``: all four; ``*_stn_final``: stage 4 only, Eq. 5).
               ``angular_4`` is Eq. 4/5 on the final embeddings;
               ``angular_i`` (i < 4) is Eq. 6: student stage i -> adapter H_i (1x1 conv + BN to
               the teacher's channels) -> the teacher's frozen blocks after stage i -> angular
               loss against the teacher's final embedding of the same image
               ([T_{i+1} o .. o T_n](F_i^t) *is* that embedding).  Weights
               ``distill_weight * lambda_i`` with lambda_4 = 1, lambda_i = lambda_{i+1}/2 by stage
               number (Sec. 4.2; ``config.distill_lambdas``).
``l2``         "Student-1" (Sec. 4.3): Eq. 7 with the l2 distance: ``softmax`` + ``l2`` =
               0.001 * ||s - t||^2 of the final embeddings + ``l2_i`` (i = 1..3) through the
               adapters and teacher tails, weights ``l2_lambda * lambda_i`` (config ``*_l2``);
               ``*_l2_final`` keeps only the final-embedding term.
``kd``         Hinton et al. 2015 ("Distilling the knowledge in a neural network") applied to the
               margin logits: ``softmax`` + ``kd`` = ``kd_lambda * T^2 KL(softmax(z_t/T) ||
               softmax(z_s/T))``, z_t from the teacher's embedding and its own ``fc7_weight`` with
               the same margin as the student head.  (The MarginDistillation authors' code
               compares with a "margin based with T" baseline that uses hard labels; this is not it.)
``hint``       FitNets-style hints (ablation): ``softmax`` + ``hint_i`` =
               ``hint_lambda * lambda_i * mean((H_i(F_i^s) - F_i^t)^2)``.
``margin``     MarginDistillation (Svitov & Alyamkin 2020): ``margin`` = softmax cross-entropy
               on ``losses.MarginDistillationHead`` (the teacher's fixed class centres, per-
               sample ArcFace margin from the teacher's angle).  No other classifier.
``lowres_kt``  Karlekar et al. 2019 knowledge transfer: the student runs at ``lowres_size``;
               at build time it takes every teacher parameter whose name and shape match
               (a fully convolutional body transfers entirely; resolution-dependent layers
               such as the 'E' output FC keep their own init) and the teacher's class centres
               as the start of its head.  Loss: ``softmax``.
``lowres_kd``  Karlekar et al. knowledge distillation: student at ``lowres_size``, teacher at
               the full resolution of the same images: ``softmax`` + ``kd`` (soft targets),
               plus an embedding term when ``kd_emb_loss`` is ``angular`` (``angular_4``) or
               ``l2`` (``l2``), weight ``kd_emb_lambda``.
``lowres_ktkd`` both: transfer at build time, distillation while training.
=============  =================================================================================

Low resolution: the method receives the full-resolution batch (``cfg.image_size``) and
downsamples it for the student itself by area averaging (``AdaptiveAvgPooling2D``), so
the teacher and the teacher-embedding cache keep seeing 112x112 images.  The loader must
then *not* downsample: ``loader_lowres_size(cfg)`` is 0 for these methods.

The teacher is never trained: its parameters have ``grad_req='null'``, its full forward
runs under ``autograd.pause(train_mode=False)`` (running BatchNorm statistics, no dropout)
and its tails come from ``model.frozen_tail`` (global statistics, gradient to the input
only; recorded in the caller's training mode, which their graph ignores).  The full
forward, when no taps are needed, also runs through ``frozen_tail(teacher, None)``: the
same numbers from a faster graph (``model.freeze_symbol``).  ``teacher_emb`` given (the
trainer's cache) skips the teacher's full forward; the tails still run for the
intermediate terms.
"""
from collections import OrderedDict

import mxnet as mx
from mxnet import autograd, gluon

from shrinkteanet.methods import losses as L
from shrinkteanet.training.config import distill_lambdas
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)

#: What each method needs.  teacher: a teacher at all; emb: its final embedding each step;
#: taps: its stage features each step; fc7: its class centres; stages: per-stage terms
#: (which distance); kd: soft targets; lowres: student at ``lowres_size``; transfer: KT init.
SPECS = {
    "none": dict(),
    "stn": dict(teacher=True, emb=True, stages="angular"),
    "l2": dict(teacher=True, emb=True, stages="l2"),
    "kd": dict(teacher=True, emb=True, fc7=True, kd=True),
    "hint": dict(teacher=True, taps=True, stages="hint"),
    "margin": dict(teacher=True, emb=True, fc7=True, margin=True),
    "lowres_kt": dict(teacher=True, fc7=True, lowres=True, transfer=True),
    "lowres_kd": dict(teacher=True, emb=True, fc7=True, kd=True, lowres=True),
    "lowres_ktkd": dict(teacher=True, emb=True, fc7=True, kd=True, lowres=True, transfer=True),
}
METHODS = tuple(SPECS)


def method_spec(cfg):
    """The ``SPECS`` row of ``cfg.distill`` (InputError naming the field if unknown)."""
    name = cfg.distill
    if name not in SPECS:
        raise InputError(f"distill={name!r}: unknown method; valid: {', '.join(METHODS)}")
    spec = dict(SPECS[name])
    if spec.get("kd") and cfg.get("kd_emb_loss", "none") not in ("none", "angular", "l2"):
        raise InputError(f"kd_emb_loss={cfg.kd_emb_loss!r}: expected none, angular or l2")
    return spec


def needs_teacher(cfg):
    """True when ``cfg.distill`` uses a teacher (at build time or every step)."""
    return bool(method_spec(cfg).get("teacher"))


def needs_teacher_embedding(cfg):
    """True when every step needs the teacher's final embedding (what a cache can hold)."""
    return bool(method_spec(cfg).get("emb"))


def student_image_size(cfg):
    """Input size of the student network: ``lowres_size`` for the low-resolution methods."""
    if method_spec(cfg).get("lowres"):
        size = int(cfg.lowres_size)
        if size <= 0 or size > int(cfg.image_size):
            raise InputError(f"lowres_size={size}: must be in 1..image_size ({cfg.image_size}) "
                             f"for distill={cfg.distill}")
        return size
    return int(cfg.image_size)


def loader_lowres_size(cfg):
    """``lowres_size`` the data loader should apply: 0 for the low-resolution methods,
    which downsample inside ``Method`` so that the teacher sees full resolution."""
    return 0 if method_spec(cfg).get("lowres") else int(cfg.get("lowres_size", 0))


def _stage_needs_taps(cfg, spec):
    kind = spec.get("stages")
    if kind is None:
        return False
    if kind == "hint":
        return True
    return any(int(s) != 4 for s in cfg.distill_stages)


def _check_stages(cfg):
    stages = [int(s) for s in cfg.distill_stages]
    if not stages or any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) != len(stages):
        raise InputError(f"distill_stages={list(cfg.distill_stages)!r}: expected distinct stages from 1..4")
    return stages


class Adapter(gluon.HybridBlock):
    """H_i of ShrinkTeaNet (Sec. 3.3, last paragraph): 1x1 convolution + BatchNorm from the
    student's stage channels to the teacher's."""

    def __init__(self, in_channels, out_channels, prefix):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(out_channels, 1, use_bias=False, in_channels=in_channels, prefix="conv_")
            self.bn = gluon.nn.BatchNorm(in_channels=out_channels, momentum=0.9, epsilon=2e-5, prefix="bn_")

    def hybrid_forward(self, F, x):
        return self.bn(self.conv(x))


class _Frozen:
    """Holds the teacher's blocks outside Gluon's child registry, so that
    ``Method.collect_params()`` never lists (or clashes with) the teacher's names."""

    def __init__(self):
        self.teacher = None
        self.full = None  # model.frozen_tail(teacher, None): the same embedding, faster graph
        self.tails = {}
        self.head = None


class Method(gluon.Block):
    """The training objective of one method (see the module docstring); built by ``build_method``.

    ``forward(data, label, teacher_emb=None) -> OrderedDict[name, NDArray (batch,)]``.
    ``data``: NCHW float32 raw RGB at ``cfg.image_size``; ``label``: (batch,) class ids.
    """

    def __init__(self, cfg, student, teacher=None, num_classes=0, teacher_fc7=None, ctx=None):
        super().__init__(prefix="")
        self.cfg = cfg
        self.method = cfg.distill
        self.spec = method_spec(cfg)
        self.ctx = _ctx_list(ctx)
        self.num_classes = int(num_classes)
        self.image_size = int(cfg.image_size)
        self.student_size = student_image_size(cfg)
        self.student = student
        self.emb_size = int(cfg.emb_size)
        self._frozen = _Frozen()
        self._check_inputs(teacher, teacher_fc7)
        weights = OrderedDict()
        self._build_classifier(cfg, teacher_fc7, weights)
        self._attach_teacher(student, teacher)
        self._build_stage_terms(cfg, student, teacher, weights)
        self._build_kd(cfg, teacher_fc7, weights)
        self.loss_weights = weights

    def _check_inputs(self, teacher, teacher_fc7):
        spec = self.spec
        if spec.get("teacher") and teacher is None:
            raise InputError(f"distill={self.method}: needs a teacher (config key 'teacher' = PREFIX,EPOCH)")
        if spec.get("fc7") and teacher_fc7 is None:
            raise InputError(f"distill={self.method}: the teacher checkpoint has no fc7_weight (class centres)")
        if teacher_fc7 is not None and spec.get("fc7"):
            if int(teacher_fc7.shape[0]) != self.num_classes:
                raise InputError(f"teacher fc7_weight has {teacher_fc7.shape[0]} classes, the training set "
                                 f"{self.num_classes} (num_classes)")

    def _build_classifier(self, cfg, teacher_fc7, weights):
        """The student's margin head (MarginDistillation's for ``margin``), started from the
        teacher's class centres for ``margin`` and the knowledge-transfer methods."""
        spec, emb_size = self.spec, self.emb_size
        s, m1, m2, m3 = L.margin_params(cfg)
        if spec.get("margin"):
            self.head = L.MarginDistillationHead(self.num_classes, emb_size, s=s, m_min=cfg.margin_m_min,
                                                 m_max=cfg.margin_m_max)
            weights["margin"] = 1.0
        else:
            self.head = L.MarginHead(self.num_classes, emb_size, s=s, m1=m1, m2=m2, m3=m3)
            weights["softmax"] = float(cfg.softmax_weight)
        self.head.initialize(ctx=self.ctx)
        if teacher_fc7 is not None and (spec.get("margin") or spec.get("transfer")):
            if tuple(teacher_fc7.shape) != (self.num_classes, emb_size):
                raise InputError(f"teacher fc7_weight shape {tuple(teacher_fc7.shape)} != "
                                 f"({self.num_classes}, emb_size={emb_size})")
            self.head.weight.set_data(teacher_fc7.astype("float32"))
        self.ce = gluon.loss.SoftmaxCrossEntropyLoss()

    def _attach_teacher(self, student, teacher):
        """Freeze the teacher, check it serves the method, and run knowledge transfer."""
        spec, emb_size = self.spec, self.emb_size
        if teacher is not None and spec.get("teacher"):
            self._frozen.teacher = teacher
            for p in teacher.collect_params().values():
                p.grad_req = "null"
            if spec.get("emb") or spec.get("taps") or spec.get("transfer"):
                t_emb = getattr(teacher, "emb_size", emb_size)
                if spec.get("emb") and t_emb != emb_size:
                    raise InputError(f"teacher_emb_size={t_emb} != emb_size={emb_size}: the embedding terms compare "
                                     "the two embeddings directly")
            if spec.get("taps") and not getattr(teacher, "with_taps", False):
                raise InputError(f"distill={self.method}: the teacher must be built with_taps=True")
            if spec.get("emb") and not spec.get("taps"):
                self._frozen.full = _frozen_full(teacher)
        if spec.get("transfer"):
            materialize(student, self.student_size, self.ctx[0])
            transfer_from_teacher(student, teacher)

    def _build_stage_terms(self, cfg, student, teacher, weights):
        """Per-stage terms (Eq. 6/7): weights by stage number, adapters H_i and teacher tails."""
        self.stages, self.stage_weights = [], []
        self.adapters = {}
        kind = self.spec.get("stages")
        if kind is not None:
            self.stages = _check_stages(cfg)
            base = {"angular": float(cfg.distill_weight), "l2": float(cfg.l2_lambda),
                    "hint": float(cfg.hint_lambda)}[kind]
            self.stage_weights = [base * lam for lam in distill_lambdas(cfg)]
            if _stage_needs_taps(cfg, self.spec):
                self._build_adapters(cfg, student, teacher, kind)
            for stage, w in zip(self.stages, self.stage_weights):
                weights[_part_name(kind, stage)] = w
        self.distance = {"angular": L.AngularDistillationLoss(), "l2": L.L2EmbeddingLoss(),
                         "hint": L.HintLoss()}.get(kind)

    def _build_kd(self, cfg, teacher_fc7, weights):
        """Soft targets from the teacher's own class centres and the optional embedding term of KD."""
        self.kd = None
        self.emb_term = None
        if not self.spec.get("kd"):
            return
        s, m1, m2, m3 = L.margin_params(cfg)
        self.kd = L.KDLoss(cfg.kd_temperature)
        weights["kd"] = float(cfg.kd_lambda)
        head = L.MarginHead(self.num_classes, self.emb_size, s=s, m1=m1, m2=m2, m3=m3, fixed=True,
                            prefix="teacher_fc7_")
        head.initialize(ctx=self.ctx)
        head.weight.set_data(teacher_fc7.astype("float32"))
        self._frozen.head = head
        kind_emb = cfg.get("kd_emb_loss", "none")
        if kind_emb != "none":
            self.emb_term = (_part_name(kind_emb, 4), float(cfg.kd_emb_lambda),
                             L.AngularDistillationLoss() if kind_emb == "angular" else L.L2EmbeddingLoss())
            weights[self.emb_term[0]] = self.emb_term[1]

    # ------------------------------------------------------------------ building
    def _build_adapters(self, cfg, student, teacher, kind):
        from shrinkteanet.model.network import frozen_tail

        if not getattr(student, "with_taps", False):
            raise InputError(f"distill={self.method} with distill_stages={self.stages}: the student must be built "
                             "with_taps=True")
        s_shapes = _stage_shapes(student, self.student_size, "student")
        t_shapes = _stage_shapes(teacher, self.image_size, "teacher")
        for stage in self.stages:
            if kind != "hint" and stage == 4:
                continue
            (cs, hs, ws), (ct, ht, wt) = s_shapes[stage - 1], t_shapes[stage - 1]
            if (hs, ws) != (ht, wt):
                raise InputError(f"distill_stages: stage {stage} is {hs}x{ws} in the student ({cfg.network}) but "
                                 f"{ht}x{wt} in the teacher ({cfg.teacher_network}); the 1x1 adapter cannot "
                                 "change spatial size")
            adapter = Adapter(cs, ct, prefix=f"adapter{stage}_")
            adapter.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=self.ctx)
            self.adapters[stage] = adapter
            self.register_child(adapter, f"adapter{stage}")
            if kind != "hint":
                self._frozen.tails[stage] = frozen_tail(teacher, stage - 1)

    def hybridize(self, active=True, **kwargs):
        """Hybridize the method's own blocks, the student and the frozen teacher parts."""
        super().hybridize(active, **kwargs)
        fr = self._frozen
        for blk in [fr.teacher, fr.full, fr.head] + list(fr.tails.values()):
            if blk is not None:
                blk.hybridize(active, **kwargs)

    # ------------------------------------------------------------------ parameters
    def trainable_params(self):
        """Parameters the optimiser updates: student, head (unless fixed) and adapters;
        never the teacher's."""
        out = gluon.ParameterDict()
        blocks = [self.student, self.head] + [self.adapters[k] for k in sorted(self.adapters)]
        for blk in blocks:
            for name, p in blk.collect_params().items():
                if p.grad_req != "null":
                    out._params[name] = p
        return out

    @property
    def teacher(self):
        return self._frozen.teacher

    # ------------------------------------------------------------------ forward
    def student_input(self, data):
        """The student's view of a full-resolution batch (downsampled for lowres_*)."""
        if int(data.shape[2]) != self.image_size or int(data.shape[3]) != self.image_size:
            raise InputError(f"distill={self.method}: batch is {data.shape[2]}x{data.shape[3]}, expected "
                             f"image_size={self.image_size} (the method downsamples for the student itself; "
                             "give the loader lowres_size=0)")
        if self.student_size == self.image_size:
            return data
        return mx.nd.contrib.AdaptiveAvgPooling2D(data, output_size=(self.student_size, self.student_size))

    def teacher_forward(self, data, teacher_emb=None):
        """(teacher embedding or None, teacher taps or None) for this batch."""
        spec, fr = self.spec, self._frozen
        need_emb = spec.get("emb") and teacher_emb is None
        if not (need_emb or spec.get("taps")):
            return teacher_emb, None
        with autograd.pause(train_mode=False):
            out = (fr.full if fr.full is not None and not spec.get("taps") else fr.teacher)(data)
        if isinstance(out, (list, tuple)):
            emb, taps = out[0], list(out[1:])
        else:
            emb, taps = out, None
        return (emb if teacher_emb is None else teacher_emb), taps

    def forward(self, data, label, teacher_emb=None):
        spec = self.spec
        out = self.student(self.student_input(data))
        if isinstance(out, (list, tuple)):
            emb, taps = out[0], list(out[1:])
        else:
            emb, taps = out, None
        t_emb, t_taps = self.teacher_forward(data, teacher_emb) if spec.get("teacher") else (None, None)
        if t_emb is not None:
            t_emb = t_emb.astype("float32", copy=False)
        parts = OrderedDict()
        if spec.get("margin"):
            logits = self.head(emb, label, t_emb)
            parts["margin"] = self.ce(logits, label)
        else:
            logits = self.head(emb, label)
            parts["softmax"] = self.ce(logits, label) * self.loss_weights["softmax"]
        kind = spec.get("stages")
        for stage, w in zip(self.stages, self.stage_weights):
            name = _part_name(kind, stage)
            if kind == "hint":
                value = self.distance(self.adapters[stage](taps[stage - 1]), t_taps[stage - 1])
            elif stage == 4:
                value = self.distance(emb, t_emb)
            else:
                feat = self.adapters[stage](taps[stage - 1])
                # the tail is frozen in its graph (global BN statistics, no Dropout), so it is
                # recorded in the caller's mode: under predict_mode MKLDNN's BatchNorm backward
                # (the gradient to feat) ran ~100x slower for the same numbers (docs/benchmarks.md)
                value = self.distance(self._frozen.tails[stage](feat), t_emb)
            parts[name] = value * w
        if self.kd is not None:
            with autograd.pause(train_mode=False):
                t_logits = self._frozen.head(t_emb, label)
            parts["kd"] = self.kd(logits, t_logits) * self.loss_weights["kd"]
            if self.emb_term is not None:
                name, w, fn = self.emb_term
                parts[name] = fn(emb, t_emb) * w
        return parts


def stage_cosines(method, data):
    """Mean cosine, over the images of ``data``, between the teacher's final embedding and the
    student's at the end of training: stage 4 = the student's own embedding; stage i < 4 (where
    the method has the adapter H_i and the teacher tail) = ``[T_{i+1} o .. o T_n](H_i(F_i^s))``,
    the quantity whose angle Eq. 6 penalises.  Inference mode (running BatchNorm statistics).
    Returns ``{stage: cosine}`` or ``{}`` for a method without a teacher embedding."""
    spec, fr = method.spec, method._frozen
    if not (spec.get("emb") and fr.teacher is not None):
        return {}
    with autograd.pause(train_mode=False):
        out = method.student(method.student_input(data))
        emb, taps = (out[0], list(out[1:])) if isinstance(out, (list, tuple)) else (out, None)
        t_emb, _ = method.teacher_forward(data)
        views = {4: emb}
        for stage in sorted(fr.tails):
            views[stage] = fr.tails[stage](method.adapters[stage](taps[stage - 1]))
        t = mx.nd.L2Normalization(t_emb.astype("float32"))
        return {stage: float(mx.nd.sum(mx.nd.L2Normalization(v.astype("float32")) * t, axis=1).mean().asscalar())
                for stage, v in sorted(views.items())}


def _frozen_full(teacher):
    """The teacher's whole embedding graph as ``model.frozen_tail(teacher, None)``, or None for
    a teacher not built by network name.  Same numbers as ``teacher(data)`` in inference mode
    (bit for bit: ``model.freeze_symbol``), but its PReLUs run as depthwise convolutions, which
    made the teacher's forward ~1.6x faster on CPU (docs/benchmarks.md, bench_train)."""
    from shrinkteanet.model.network import frozen_tail

    try:
        return frozen_tail(teacher, None)
    except ValueError:
        return None


def _part_name(kind, stage):
    if kind == "l2":
        return "l2" if stage == 4 else f"l2_{stage}"
    return f"{kind}_{stage}"


def _ctx_list(ctx):
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def _stage_shapes(net, image_size, who):
    split = getattr(net, "split", None)
    if split is None:
        raise InputError(f"{who}: stage terms need a network built by name (shrinkteanet.symbols), not a bare symbol")
    return split.stage_shapes(image_size)


def materialize(net, image_size, ctx=None):
    """Finish Gluon's deferred initialisation of ``net`` with one zero image (inference
    mode, so no BatchNorm statistic moves), so that every parameter has its shape."""
    with autograd.pause(train_mode=False):
        net(mx.nd.zeros((1, 3, int(image_size), int(image_size)), ctx=ctx or mx.cpu()))


def transfer_from_teacher(student, teacher):
    """Knowledge transfer of Karlekar et al. 2019: copy every teacher parameter whose
    name and shape the student shares (arguments and BatchNorm statistics).  Returns the
    names copied; InputError when nothing matches (different architectures)."""
    t_params = dict(teacher.collect_params().items())
    copied, skipped = [], []
    for name, p in student.collect_params().items():
        if name not in t_params:
            continue
        # a loaded teacher may not record .shape; its data does
        value = t_params[name].data(t_params[name].list_ctx()[0])
        if tuple(p.shape) == tuple(value.shape):
            p.set_data(value.astype(p.dtype))
            copied.append(name)
        else:
            skipped.append(name)
    total = len(list(student.collect_params().keys()))
    # output units share InsightFace's names (pre_fc1, fc1) across families: a few matches
    # between different architectures are not a transfer
    if 2 * len(copied) < total:
        raise InputError(f"distill=lowres_kt*: only {len(copied)} of {total} student parameters match the teacher "
                         "by name and shape (knowledge transfer needs the teacher's architecture: "
                         "network=teacher_network, same net_opts)")
    log.info("knowledge transfer: %d parameters from the teacher, %d kept (shape differs: %s)", len(copied),
             len(skipped), ", ".join(skipped[:4]))
    return copied


def build_method(cfg, student, teacher=None, num_classes=None, teacher_fc7=None, ctx=None, hybridize=False):
    """The ``Method`` of ``cfg.distill`` around an initialised ``student``
    (``model.EmbeddingNet``, ``with_taps=True`` for stage terms) and, where the method
    needs one, a loaded ``teacher`` (``EmbeddingNet`` built by network name;
    ``with_taps=True`` for ``hint``).  ``teacher_fc7``: the teacher's ``fc7_weight``
    (NDArray (classes, emb)) for kd / margin / lowres_*.  ``num_classes`` defaults to
    ``cfg.num_classes``, else the rows of ``teacher_fc7``."""
    if num_classes is None or int(num_classes) <= 0:
        num_classes = int(cfg.num_classes or 0) or (int(teacher_fc7.shape[0]) if teacher_fc7 is not None else 0)
    if num_classes <= 0:
        raise InputError("num_classes: unknown (set num_classes or give the data set's property file)")
    method = Method(cfg, student, teacher=teacher if method_spec(cfg).get("teacher") else None,
                    num_classes=num_classes, teacher_fc7=teacher_fc7, ctx=ctx)
    if hybridize:
        method.hybridize()
    return method


def build_networks(cfg, teacher_checkpoint=None, ctx=None):
    """``(student, teacher, teacher_fc7)`` for ``cfg``: the student ``EmbeddingNet``
    (``cfg.network``, ``cfg.net_opts``, at ``student_image_size(cfg)``, taps when the
    method's stage terms need them), Xavier-initialised as InsightFace's fresnet/MobileFaceNet
    (gaussian, fan-out, magnitude 2); the teacher loaded from ``teacher_checkpoint``
    ((prefix, epoch) or "PREFIX,EPOCH"; default ``cfg.teacher``) into
    ``cfg.teacher_network`` with ``cfg.teacher_net_opts``, frozen; and its ``fc7_weight``
    (None when the checkpoint has none).  No teacher for ``distill=none``."""
    from shrinkteanet.model.network import EmbeddingNet, load_checkpoint
    from shrinkteanet.core.utils import parse_model_arg

    ctx = _ctx_list(ctx)
    spec = method_spec(cfg)
    student_opts = dict(cfg.net_opts)
    student_opts["image_size"] = student_image_size(cfg)
    student = EmbeddingNet(cfg.network, emb_size=int(cfg.emb_size), with_taps=_stage_needs_taps(cfg, spec),
                           prelu_as_conv=bool(cfg.get("prelu_as_conv", True)),
                           **student_opts)
    student.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=ctx)
    materialize(student, student_opts["image_size"], ctx[0])
    if not spec.get("teacher"):
        return student, None, None
    ckpt = teacher_checkpoint if teacher_checkpoint is not None else cfg.teacher
    if not ckpt:
        raise InputError(f"teacher: distill={cfg.distill} needs a teacher checkpoint (teacher=PREFIX,EPOCH)")
    prefix, epoch = parse_model_arg(ckpt) if isinstance(ckpt, str) else ckpt
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, keep_extra=True)
    fc7 = arg_params.get("fc7_weight")
    t_opts = dict(cfg.teacher_net_opts)
    t_opts.setdefault("image_size", int(cfg.image_size))
    emb = int(arg_params["pre_fc1_weight"].shape[0]) if "pre_fc1_weight" in arg_params else int(cfg.teacher_emb_size)
    teacher = EmbeddingNet(cfg.teacher_network, emb_size=emb, with_taps=bool(spec.get("taps")), **t_opts)
    names = set(teacher.collect_params().keys())
    missing = sorted(n for n in names if n not in arg_params and n not in aux_params)
    if missing:
        raise InputError(f"teacher={prefix},{epoch}: not a {cfg.teacher_network} checkpoint "
                         f"({len(missing)} parameters missing, e.g. {missing[0]!r}; check teacher_network)")
    teacher.set_params(arg_params, aux_params, ctx=ctx)
    for p in teacher.collect_params().values():
        p.grad_req = "null"
    if fc7 is not None:
        fc7 = fc7.as_in_context(ctx[0])
    return student, teacher, fc7
