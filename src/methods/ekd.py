"""EKD, Evaluation-oriented Knowledge Distillation (Huang, Wu, Xu, Ding, CVPR 2022; code
``Tencent/TFace``, ``recognition/tasks/ekd``).

``softmax`` (the margin head of ``cfg.loss``) + ``ekd_pos`` + ``ekd_neg``: the rank-based loss
on the critical pair relations of the batch, those that move the TPR and the FPR at the
evaluation's thresholds (``base.ekd_terms`` gives the equations).  It compares similarities within
each network, never a student embedding with a teacher one, so the student's embedding may be
narrower than the teacher's; a teacher cache serves it (teacher embeddings only).

Defaults, from the authors' code (``distillation/ekd.py``: ``topk = 2000``, ``t = 0.01``,
``anchor = [10, 100, 1000, 10000, 100000, 1000000]``, ``momentum = 0.01``,
``loss = s_pos_kd_loss * 0.02 + s_neg_kd_loss * 0.01``; ``train.py``: ``softmax_loss + kd_loss``;
``train.yaml``: ArcFace head, scale 64, margin 0.4, which the named config leaves to ``cfg.loss``
as for every other method here).  The authors' balanced sampler (32 random + 8 identities x 4
images per batch) is not reproduced: the loader's random batches hold fewer positive pairs.

Sources: the equations follow the authors' code (``EKD.forward``, ``relative_loss``); the paper's
own text was not at hand when this was written (no copy in the project's paper folder), so its
equation numbers are not cited here.
"""
from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant


def terms(build):
    """The EKD term (parts ``ekd_pos``, ``ekd_neg``)."""
    from shrinkteanet.methods.base.ekd_terms import EKDTerm

    return [EKDTerm(build)]


def check(cfg):
    """Positive temperature, momentum in (0, 1], top-k >= 1 and FPR denominators >= 1."""
    from shrinkteanet.core.errors import InputError

    if not float(cfg.ekd_temperature) > 0:
        raise InputError(f"config ekd_temperature={cfg.ekd_temperature!r}: must be > 0")
    if not 0 < float(cfg.ekd_momentum) <= 1:
        raise InputError(f"config ekd_momentum={cfg.ekd_momentum!r}: must be in (0, 1]")
    if int(cfg.ekd_topk) < 1:
        raise InputError(f"config ekd_topk={cfg.ekd_topk!r}: must be >= 1")
    if not cfg.ekd_fpr_anchors or any(float(a) < 1 for a in cfg.ekd_fpr_anchors):
        raise InputError(f"config ekd_fpr_anchors={list(cfg.ekd_fpr_anchors)!r}: 1/FPR values, each >= 1")


METHOD = MethodDef(
    name="ekd",
    summary="EKD: rank-based loss on the critical pairs at the evaluation's FPR thresholds",
    order=110,
    needs=Needs(teacher=True, emb=True),
    keys=dict(ekd_pos_weight=0.02, ekd_neg_weight=0.01, ekd_temperature=0.01, ekd_momentum=0.01,
                  ekd_topk=2000, ekd_fpr_anchors=[10, 100, 1000, 10000, 100000, 1000000]),
    variants=(Variant("ekd"),),
    study=(StudyRow("ekd", "ekd", "EKD", order=64),),
    terms=terms,
    check=check,
)
