"""MarginDistillation (Svitov & Alyamkin 2020).

``margin`` = softmax cross-entropy on ``losses.MarginDistillationHead``: the teacher's fixed class
centres, a per-sample ArcFace margin in ``[margin_m_min, margin_m_max]`` from the teacher's angle to
its centre.  No other classifier, so this method replaces the classifier, not only adds a term.
"""
from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant


def classifier(build):
    """The MarginDistillation head started from (and fixed at) the teacher's class centres."""
    from shrinkteanet.methods.base import blocks as L
    from shrinkteanet.methods.base.terms import Classifier, load_centres

    cfg = build.cfg
    s, _, _, _ = L.margin_params(cfg)
    head = L.MarginDistillationHead(build.num_classes, build.emb_size, s=s, m_min=cfg.margin_m_min,
                                    m_max=cfg.margin_m_max)
    head.initialize(ctx=build.ctx)
    load_centres(head, build)
    return Classifier(head, "margin", 1.0, with_teacher=True)


def same_embedding(cfg):
    """The student's class centres are the teacher's."""
    return ("distill=margin", "MarginDistillation uses the teacher's fc7 centres as the student's class centres, "
                              "so emb_size must equal the teacher's")


METHOD = MethodDef(
    name="margin",
    summary="MarginDistillation: fixed teacher centres, per-sample margin from the teacher's angle",
    order=60,
    needs=Needs(teacher=True, emb=True, fc7=True),
    keys=dict(margin_m_min=0.2, margin_m_max=0.5),  # the per-sample margin's range
    defaults=dict(margin_s=64.0),
    variants=(Variant("margin"),),
    study=(StudyRow("margin", "margin", "MarginDistillation", order=60),),
    classifier=classifier,
    same_embedding=same_embedding,
)
