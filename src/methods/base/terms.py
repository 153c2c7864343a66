"""The term classes every method builds its loss from, in one module (imported by the builders,
never at discovery).

``Build``: what a method's ``terms``/``classifier`` builder is given (config, networks, sizes,
the teacher's class centres, the holder of frozen teacher blocks).  ``StepViews``: what each term's
forward is given (student and teacher embeddings and stage features, labels, the student's
logits).  ``Term``: a Gluon block whose call returns named, already-weighted per-sample loss
parts; ``EmbeddingTerm`` is the common one on the final embeddings.  ``Classifier``: the head
and its cross-entropy part (the margin head of ``cfg.loss`` by default, ``margin_softmax``).
``StageTerms``: the per-stage terms of ShrinkTeaNet Eq. 6/7 (Duong et al. 2019) with their
adapters H_i (``Adapter``, ``EmbeddingAdapter``); ``SoftTargets``: Hinton et al. 2015 on the
margin logits.
"""
import dataclasses
from collections import OrderedDict
from typing import Any, Optional

import mxnet as mx
from mxnet import autograd, gluon

from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.base import blocks as L
from shrinkteanet.methods.base.stage_rules import LAST_STAGE, check_stages, distill_lambdas


class Frozen:
    """Holds the teacher's blocks outside Gluon's child registry, so that
    ``Method.collect_params()`` never lists (or clashes with) the teacher's names."""

    def __init__(self):
        self.teacher = None
        self.full = None  # model.frozen_tail(teacher, None): the same embedding, faster graph
        self.tails = {}  # stage -> model.frozen_tail(teacher, stage - 1), Eq. 6
        self.head = None  # the teacher's own margin head (soft targets)

    def blocks(self):
        """Every frozen block held (for hybridization)."""
        return [b for b in [self.teacher, self.full, self.head] + list(self.tails.values()) if b is not None]


@dataclasses.dataclass
class Build:
    """What a method's builders see: ``cfg``, the ``student`` and (frozen) ``teacher`` networks,
    ``num_classes``, ``emb_size``, ``image_size`` (the teacher's input), ``student_size`` (the
    student's), ``teacher_fc7`` (class centres or None), ``ctx`` (list) and ``frozen``
    (``Frozen``: where teacher tails and heads go), ``head`` (the classifier's, set before ``prepare``)."""

    cfg: Any
    student: Any
    teacher: Any
    num_classes: int
    emb_size: int
    image_size: int
    student_size: int
    teacher_fc7: Any
    ctx: list
    frozen: Frozen
    method: str = ""
    head: Any = None  # the classifier's head, once built (what a ``prepare`` step may start)


@dataclasses.dataclass
class StepViews:
    """One step's views: student ``emb`` and stage ``taps`` (or None), teacher ``t_emb`` and
    ``t_taps`` (or None), ``label`` and the student's ``logits`` (set after the classifier)."""

    emb: Any
    taps: Optional[list]
    t_emb: Any
    t_taps: Optional[list]
    label: Any
    logits: Any = None


class Term(gluon.Block):
    """A method's loss term.  ``weights``: OrderedDict part name -> weight (what
    ``Method.loss_weights`` reports); ``forward(batch) -> OrderedDict[name, NDArray (batch,)]``
    of weighted per-sample parts."""

    def __init__(self):
        super().__init__(prefix="")
        self.weights = OrderedDict()

    def trainable_blocks(self):
        """The blocks whose parameters the optimiser updates (in ``trainable_params`` order)."""
        return []

    @property
    def adapters(self):
        """``{stage: adapter H_i}`` this term owns (``assembler.stage_cosines`` reads them)."""
        return {}


class EmbeddingTerm(Term):
    """``weight * loss(student embedding, teacher embedding)`` as part ``name``; ``loss`` is a
    block or a function of two (batch, D) NDArrays giving (batch,)."""

    def __init__(self, name, weight, loss):
        super().__init__()
        self.part = name
        self.loss = loss
        self.weights[name] = float(weight)

    def forward(self, batch):
        return OrderedDict([(self.part, self.loss(batch.emb, batch.t_emb) * self.weights[self.part])])


class Classifier:
    """The student's head, its cross-entropy part ``part`` and that part's ``weight``;
    ``with_teacher``: the head also takes the teacher's embedding (MarginDistillation)."""

    def __init__(self, head, part, weight, with_teacher=False):
        self.head = head
        self.part = part
        self.weight = float(weight)
        self.with_teacher = with_teacher

    def logits(self, batch):
        if self.with_teacher:
            return self.head(batch.emb, batch.label, batch.t_emb)
        return self.head(batch.emb, batch.label)


def margin_softmax(build):
    """The default classifier: the margin head of ``cfg.loss`` (InsightFace's fc7 with
    ``margin_s``, ``m1``, ``m2``, ``m3``), part ``softmax`` weighted by ``softmax_weight``."""
    head = L.margin_head(build.cfg, build.num_classes, build.emb_size)
    head.initialize(ctx=build.ctx)
    return Classifier(head, "softmax", build.cfg.softmax_weight)


def load_centres(head, build):
    """Start ``head`` from the teacher's class centres (``fc7_weight``), checking its shape."""
    fc7 = build.teacher_fc7
    if tuple(fc7.shape) != (build.num_classes, build.emb_size):
        raise InputError(f"teacher fc7_weight shape {tuple(fc7.shape)} != "
                         f"({build.num_classes}, emb_size={build.emb_size})")
    head.weight.set_data(fc7.astype("float32"))


def teacher_emb_size(teacher, default):
    """Width of the teacher's embedding (``default`` for a block that does not say)."""
    split = getattr(teacher, "split", None)
    return int(split.emb_size) if split is not None else int(getattr(teacher, "emb_size", default))


def embedding_loss(kind):
    """The embedding distance of a config value: ``angular`` (ShrinkTeaNet Eq. 4) or ``l2``."""
    return L.AngularDistillationLoss() if kind == "angular" else L.L2EmbeddingLoss()


# ---- per-stage terms (ShrinkTeaNet Eq. 6/7, shared by stn, l2 and hint) --------------------------
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


class EmbeddingAdapter(gluon.HybridBlock):
    """H_n of ShrinkTeaNet (Sec. 3.3: "the dimension of F_n^s is increased to match the dimension of
    F_n^t", a 1x1 convolution followed by batch normalization) for the final stage, whose features
    are the embeddings: a student embedding (batch, D_s) seen as a 1x1 map, to the teacher's D_t."""

    def __init__(self, in_units, out_units, prefix):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.adapter = Adapter(in_units, out_units, prefix="")

    def hybrid_forward(self, F, x):
        return F.flatten(self.adapter(F.reshape(x, shape=(0, 0, 1, 1))))


def _stage_shapes(net, image_size, who):
    split = getattr(net, "split", None)
    if split is None:
        raise InputError(f"{who}: stage terms need a network built by name (shrinkteanet.symbols), not a bare symbol")
    return split.stage_shapes(image_size)


class StageTerms(Term):
    """One part per stage of ``cfg.distill_stages``: ``part_name(i)`` = ``base * lambda_i *
    distance(...)``.  With ``on_taps`` (hints, FitNets) the distance is between H_i(F_i^s) and
    the teacher's F_i^t at every stage; otherwise (Eq. 6) stage 4 compares the final embeddings
    and stage i < 4 compares ``[T_{i+1} o .. o T_n](H_i(F_i^s))`` with the teacher's embedding."""

    def __init__(self, build, *, distance, base, part_name, on_taps=False):
        super().__init__()
        self.distance = distance
        self.part_name = part_name
        self.on_taps = on_taps
        self.stages = check_stages(build.cfg)
        self.stage_weights = [float(base) * lam for lam in distill_lambdas(build.cfg)]
        self._adapters = {}
        # the teacher's frozen tails stay in ``build.frozen`` (``terms.Frozen``, outside Gluon's
        # child registry, as every teacher block): a dict of them held here made every
        # hybridize warn "StageTerms._tails is an unregistered container with Blocks"
        self._frozen = build.frozen
        if on_taps or any(s != LAST_STAGE for s in self.stages):
            self._build_adapters(build)
        if not on_taps and LAST_STAGE in self.stages:
            self._build_final_adapter(build)
        for stage, w in zip(self.stages, self.stage_weights):
            self.weights[part_name(stage)] = w

    def _build_adapters(self, build):
        from shrinkteanet.model.network import frozen_tail

        cfg = build.cfg
        if not getattr(build.student, "with_taps", False):
            raise InputError(f"distill={build.method} with distill_stages={self.stages}: the student must be built "
                             "with_taps=True")
        s_shapes = _stage_shapes(build.student, build.student_size, "student")
        t_shapes = _stage_shapes(build.teacher, build.image_size, "teacher")
        for stage in self.stages:
            if not self.on_taps and stage == LAST_STAGE:
                continue
            (cs, hs, ws), (ct, ht, wt) = s_shapes[stage - 1], t_shapes[stage - 1]
            if (hs, ws) != (ht, wt):
                raise InputError(f"distill_stages: stage {stage} is {hs}x{ws} in the student ({cfg.network}) but "
                                 f"{ht}x{wt} in the teacher ({cfg.teacher_network}); the 1x1 adapter cannot "
                                 "change spatial size")
            adapter = Adapter(cs, ct, prefix=f"adapter{stage}_")
            adapter.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=build.ctx)
            self._adapters[stage] = adapter
            self.register_child(adapter, f"adapter{stage}")
            if not self.on_taps:
                build.frozen.tails[stage] = frozen_tail(build.teacher, stage - 1)

    def _build_final_adapter(self, build):
        """``EmbeddingAdapter`` H_4 when the student's embedding is narrower or wider than the
        teacher's (Sec. 3.3); none when they match (the paper's identity case, Eq. 4/5 as is)."""
        t_emb = teacher_emb_size(build.teacher, build.emb_size)
        if t_emb == int(build.emb_size):
            return
        adapter = EmbeddingAdapter(int(build.emb_size), t_emb, prefix=f"adapter{LAST_STAGE}_")
        adapter.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=build.ctx)
        self._adapters[LAST_STAGE] = adapter
        self.register_child(adapter, f"adapter{LAST_STAGE}")

    @property
    def adapters(self):
        return self._adapters

    def trainable_blocks(self):
        return [self._adapters[k] for k in sorted(self._adapters)]

    def forward(self, batch):
        parts = OrderedDict()
        for stage, w in zip(self.stages, self.stage_weights):
            if self.on_taps:
                value = self.distance(self._adapters[stage](batch.taps[stage - 1]), batch.t_taps[stage - 1])
            elif stage == LAST_STAGE:
                final = self._adapters.get(LAST_STAGE)
                value = self.distance(final(batch.emb) if final is not None else batch.emb, batch.t_emb)
            else:
                # float32 at the boundary: the tail's input is a float32 Variable (under AMP the
                # adapter's output is float16; the tail casts again where its graph runs fp16)
                feat = self._adapters[stage](batch.taps[stage - 1]).astype("float32", copy=False)
                # the tail is frozen in its graph (global BN statistics, no Dropout), so it is
                # recorded in the caller's mode: under predict_mode MKLDNN's BatchNorm backward
                # (the gradient to feat) ran ~100x slower for the same numbers (docs/benchmarks.md)
                value = self.distance(self._frozen.tails[stage](feat), batch.t_emb)
            parts[self.part_name(stage)] = value * w
        return parts


# ---- soft targets (Hinton et al. 2015, shared by kd, lowres_kd and lowres_ktkd) ----------------
class SoftTargets(Term):
    """``kd`` = ``kd_lambda * T^2 KL(softmax(z_t/T) || softmax(z_s/T))``; z_t from the teacher's
    embedding and its own fixed ``fc7_weight`` with the same margin as the student head.  (The
    MarginDistillation authors compare with a "margin based with T" baseline that uses hard
    labels; this is not it.)  The teacher's head goes to ``build.frozen.head``."""

    def __init__(self, build):
        super().__init__()
        cfg = build.cfg
        self.kd = L.KDLoss(cfg.kd_temperature)
        self.weights["kd"] = float(cfg.kd_lambda)
        # the teacher's own head on the teacher's own embedding: its width may differ from the student's
        head = L.margin_head(cfg, build.num_classes, int(build.teacher_fc7.shape[1]), fixed=True,
                             prefix="teacher_fc7_")
        head.initialize(ctx=build.ctx)
        head.weight.set_data(build.teacher_fc7.astype("float32"))
        build.frozen.head = head
        self._frozen = build.frozen

    def forward(self, batch):
        with autograd.pause(train_mode=False):
            t_logits = self._frozen.head(batch.t_emb, batch.label)
        return OrderedDict([("kd", self.kd(batch.logits, t_logits) * self.weights["kd"])])
