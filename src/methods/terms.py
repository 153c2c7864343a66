"""The pieces a method module builds its loss from (imported by the builders, never at discovery).

``Build``: what a method's ``terms``/``classifier`` builder is given (config, networks, sizes,
the teacher's class centres, the holder of frozen teacher blocks).  ``Batch``: what each term's
forward is given (student and teacher embeddings and stage features, labels, the student's
logits).  ``Term``: a Gluon block whose call returns named, already-weighted per-sample loss
parts; ``EmbeddingTerm`` is the common one on the final embeddings.  ``Classifier``: the head
and its cross-entropy part (the margin head of ``cfg.loss`` by default, ``margin_softmax``).
"""
import dataclasses
from collections import OrderedDict
from typing import Any, Optional

from mxnet import gluon

from shrinkteanet.core.errors import InputError
from shrinkteanet.methods import losses as L


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
    (``Frozen``: where teacher tails and heads go)."""

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


@dataclasses.dataclass
class Batch:
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
        """``{stage: adapter H_i}`` this term owns (``distill.stage_cosines`` reads them)."""
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
    s, m1, m2, m3 = L.margin_params(build.cfg)
    head = L.MarginHead(build.num_classes, build.emb_size, s=s, m1=m1, m2=m2, m3=m3)
    head.initialize(ctx=build.ctx)
    return Classifier(head, "softmax", build.cfg.softmax_weight)


def load_centres(head, build):
    """Start ``head`` from the teacher's class centres (``fc7_weight``), checking its shape."""
    fc7 = build.teacher_fc7
    if tuple(fc7.shape) != (build.num_classes, build.emb_size):
        raise InputError(f"teacher fc7_weight shape {tuple(fc7.shape)} != "
                         f"({build.num_classes}, emb_size={build.emb_size})")
    head.weight.set_data(fc7.astype("float32"))


def embedding_loss(kind):
    """The embedding distance of a config value: ``angular`` (ShrinkTeaNet Eq. 4) or ``l2``."""
    return L.AngularDistillationLoss() if kind == "angular" else L.L2EmbeddingLoss()
