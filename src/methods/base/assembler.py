"""The generic assembler of a teacher-student method: "student forward + the method's terms".

``build_method(cfg, student, teacher, num_classes)`` returns a ``Method`` whose call
``method(data, label, teacher_emb=None)`` gives a dict of named, already-weighted per-sample loss
parts; their sum is the training objective.  ``cfg.distill`` names a method of the registry
(``shrinkteanet.methods.base.registry``; one module per method: ``none``, ``stn`` (ShrinkTeaNet,
Duong et al. 2019, Eq. 4-7), ``l2`` ("Student-1"), ``kd`` (Hinton), ``hint``, ``margin``
(MarginDistillation), ``lowres_kt``/``lowres_kd``/``lowres_ktkd`` (Karlekar et al. 2019),
``adadistill`` (Boutros et al. 2024), ``ekd`` (Huang et al. 2022); each
module's docstring gives its terms).  From the method's declaration this module does what is
common to all: check and freeze the teacher, build the classifier (the margin head of
``cfg.loss`` unless the method brings its own), the method's own ``prepare`` step (knowledge
transfer), the teacher's forward where it needs the embedding or the stage features, and the
student's forward; the method's ``terms`` add their parts after the classifier's (``softmax`` |
``margin``).  Building the networks themselves is ``training.networks``.

A method with its own ``student_size`` (low resolution) receives the full-resolution batch
(``cfg.image_size``) and the student gets it downsampled by area averaging
(``AdaptiveAvgPooling2D``), so the teacher and the teacher-embedding cache keep seeing
112x112 images.  The loader must then *not* downsample: ``registry.loader_lowres_size(cfg)``.

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

from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.base.registry import method_of, needs_teacher, student_image_size
from shrinkteanet.methods.base.stage_rules import LAST_STAGE
from shrinkteanet.methods.base.terms import Build, Frozen, StepViews, margin_softmax, teacher_emb_size
from shrinkteanet.model.network import context_list


def _split_taps(out):
    """(embedding, [stage features] or None) of a network's output."""
    if isinstance(out, (list, tuple)):
        return out[0], list(out[1:])
    return out, None


class Method(gluon.Block):
    """The training objective of one method (see the module docstring); built by ``build_method``.

    ``forward(data, label, teacher_emb=None) -> OrderedDict[name, NDArray (batch,)]``.
    ``data``: NCHW float32 raw RGB at ``cfg.image_size``; ``label``: (batch,) class ids.
    """

    def __init__(self, cfg, student, teacher=None, num_classes=0, teacher_fc7=None, ctx=None):
        super().__init__(prefix="")
        self.cfg = cfg
        self.method = cfg.distill
        self.definition = method_of(cfg)
        self.needs = self.definition.needs
        self.ctx = context_list(ctx)
        self.num_classes = int(num_classes)
        self.image_size = int(cfg.image_size)
        self.student_size = student_image_size(cfg)
        self.student = student
        self.emb_size = int(cfg.emb_size)
        self._frozen = Frozen()
        self._check_inputs(teacher, teacher_fc7)
        build = Build(cfg=cfg, student=student, teacher=teacher, num_classes=self.num_classes,
                      emb_size=self.emb_size, image_size=self.image_size, student_size=self.student_size,
                      teacher_fc7=teacher_fc7, ctx=self.ctx, frozen=self._frozen, method=self.method)
        self._build_classifier(build)
        self._attach_teacher(build)
        if self.definition.prepare is not None:
            self.definition.prepare(build)
        self._build_terms(build)

    def _check_inputs(self, teacher, teacher_fc7):
        needs = self.needs
        if needs.teacher and teacher is None:
            raise InputError(f"distill={self.method}: needs a teacher (config key 'teacher' = PREFIX,EPOCH)")
        if needs.fc7 and teacher_fc7 is None:
            raise InputError(f"distill={self.method}: the teacher checkpoint has no fc7_weight (class centres)")
        if teacher_fc7 is not None and needs.fc7:
            if int(teacher_fc7.shape[0]) != self.num_classes:
                raise InputError(f"teacher fc7_weight has {teacher_fc7.shape[0]} classes, the training set "
                                 f"{self.num_classes} (num_classes)")

    def _build_classifier(self, build):
        """The method's classifier (default: the margin head of ``cfg.loss``), also ``build.head``."""
        make = self.definition.classifier or margin_softmax
        self._classifier = make(build)
        self.head = build.head = self._classifier.head
        self.ce = gluon.loss.SoftmaxCrossEntropyLoss()

    def _attach_teacher(self, build):
        """Freeze the teacher and check it serves the method (a cache-only run's stand-in,
        ``cached_teacher.CachedTeacher``, has no network to freeze or run)."""
        from shrinkteanet.methods.base.cached_teacher import is_cached

        needs, teacher = self.needs, build.teacher
        if teacher is not None and needs.teacher:
            # a cache-only run's stand-in has no network: nothing to run or hybridize
            self._frozen.teacher = None if is_cached(teacher) else teacher
            for p in teacher.collect_params().values():
                p.grad_req = "null"
            from shrinkteanet.methods.base.teacher_check import check_embedding_sizes

            check_embedding_sizes(self.cfg, self.definition, teacher_emb_size(teacher, self.emb_size))
            if needs.taps and not getattr(teacher, "with_taps", False):
                raise InputError(f"distill={self.method}: the teacher must be built with_taps=True")
            if needs.emb and not needs.taps and not is_cached(teacher):
                self._frozen.full = _frozen_full(teacher)

    def _build_terms(self, build):
        """The method's terms, each a child block; ``loss_weights`` lists every part's weight."""
        self.terms = list(self.definition.terms(build)) if self.definition.terms is not None else []
        weights = OrderedDict([(self._classifier.part, self._classifier.weight)])
        for i, term in enumerate(self.terms):
            self.register_child(term, f"term{i}")
            weights.update(term.weights)
        self.loss_weights = weights

    def hybridize(self, active=True, **kwargs):
        """Hybridize the method's own blocks, the student and the frozen teacher parts."""
        super().hybridize(active, **kwargs)
        for blk in self._frozen.blocks():
            blk.hybridize(active, **kwargs)

    # ------------------------------------------------------------------ parameters
    def trainable_params(self):
        """Parameters the optimiser updates: student, head (unless fixed) and the terms' own
        blocks (adapters); never the teacher's."""
        out = gluon.ParameterDict()
        blocks = [self.student, self.head] + [b for term in self.terms for b in term.trainable_blocks()]
        for blk in blocks:
            for name, p in blk.collect_params().items():
                if p.grad_req != "null":
                    out._params[name] = p
        return out

    @property
    def teacher(self):
        return self._frozen.teacher

    @property
    def adapters(self):
        """``{stage: adapter H_i}`` of every term."""
        return {stage: a for term in self.terms for stage, a in term.adapters.items()}

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
        needs, fr = self.needs, self._frozen
        need_emb = needs.emb and teacher_emb is None
        if not (need_emb or needs.taps):
            return teacher_emb, None
        if fr.teacher is None:
            raise InputError(f"distill={self.method}: no teacher loaded (the run reads teacher embeddings "
                             "from --teacher-cache): pass the batch's cached embeddings")
        with autograd.pause(train_mode=False):
            out = (fr.full if fr.full is not None and not needs.taps else fr.teacher)(data)
        emb, taps = _split_taps(out)
        return (emb if teacher_emb is None else teacher_emb), taps

    def forward(self, data, label, teacher_emb=None):
        emb, taps = _split_taps(self.student(self.student_input(data)))
        t_emb, t_taps = self.teacher_forward(data, teacher_emb) if self.needs.teacher else (None, None)
        if t_emb is not None:
            t_emb = t_emb.astype("float32", copy=False)
        batch = StepViews(emb=emb, taps=taps, t_emb=t_emb, t_taps=t_taps, label=label)
        batch.logits = self._classifier.logits(batch)
        parts = OrderedDict([(self._classifier.part, self.ce(batch.logits, label) * self._classifier.weight)])
        for term in self.terms:
            parts.update(term(batch))
        return parts


def stage_cosines(method, data, teacher_emb=None):
    """Mean cosine, over the images of ``data``, between the teacher's final embedding and the
    student's at the end of training: stage 4 = the student's own embedding; stage i < 4 (where
    the method has the adapter H_i and the teacher tail) = ``[T_{i+1} o .. o T_n](H_i(F_i^s))``,
    the quantity whose angle Eq. 6 penalises.  Inference mode (running BatchNorm statistics).
    ``teacher_emb``: the batch's embeddings from the teacher cache (a run with no teacher loaded).
    Returns ``{stage: cosine}`` or ``{}`` for a method without a teacher embedding."""
    fr = method._frozen
    if not (method.needs.emb and (fr.teacher is not None or teacher_emb is not None)):
        return {}
    with autograd.pause(train_mode=False):
        emb, taps = _split_taps(method.student(method.student_input(data)))
        t_emb, _ = method.teacher_forward(data, teacher_emb)
        # a student narrower than its teacher is compared through its final adapter (Sec. 3.3)
        final = method.adapters.get(LAST_STAGE) if not method.needs.taps else None
        views = {LAST_STAGE: final(emb) if final is not None else emb}
        if int(views[LAST_STAGE].shape[1]) != int(t_emb.shape[1]):
            del views[LAST_STAGE]  # EKD: a narrower student, never compared with the teacher directly
        for stage in sorted(fr.tails):
            views[stage] = fr.tails[stage](method.adapters[stage](taps[stage - 1]).astype("float32", copy=False))
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
    method = Method(cfg, student, teacher=teacher if needs_teacher(cfg) else None,
                    num_classes=num_classes, teacher_fc7=teacher_fc7, ctx=ctx)
    if hybridize:
        method.hybridize()
    return method
