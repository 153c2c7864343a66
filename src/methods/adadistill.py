"""AdaDistill (Boutros, Struc, Damer, ECCV 2024, arXiv 2407.01332; code ``fdbtrs/AdaDistill``).

Knowledge distillation inside the margin-penalty softmax: part ``adadistill`` = softmax
cross-entropy of the student's embedding against class centres that are the teacher's, an
exponential moving average of the teacher's normalised embeddings with the adaptive momentum
alpha = cos(s, t) * cos(c_y, t) (``base.adadistill_head`` gives the update and its departures).  No
other term, no distillation weight to tune (the paper's point), and no teacher classifier: the
centres come from the teacher's embeddings alone, so a teacher cache serves it.

Defaults, from the authors' release (``config/config.py``: ``s=64.0``, ``m=0.45``,
``adaptive_alpha=True``; ``utils/losses.py``: CosFace ``m=0.35``, kernel init N(0, 0.01)):
variant ``adadistill`` = AdaArcDistill (ArcFace, m2=0.45), ``adadistill_cos`` = AdaCosDistill
(CosFace, m3=0.35); ``adadistill_weighted=false`` gives the paper's unweighted alpha = cos(s, t)
(the release's ``adaptive_alpha=False`` path).  The student's embedding must be as wide as the
teacher's.  The paper's fixed-centre ArcDistill / CosDistill baselines need the teacher's fc7
(``Needs.fc7``) and are not variants of this method.

Sources: the equations follow the authors' code line by line (``AdaptiveAArcFace``,
``AdaptiveACosFace``); the paper's own text was not at hand when this was written (no copy in the
project's paper folder), so its equation numbers are not cited here, only its sections' content.
"""
from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant


def classifier(build):
    """The AdaDistill head of ``cfg``'s margin (``margin_s``, ``margin_m1..3``), part ``adadistill``."""
    from shrinkteanet.methods.base import blocks as L
    from shrinkteanet.methods.base.adadistill_head import AdaDistillHead
    from shrinkteanet.methods.base.terms import Classifier

    from shrinkteanet.core.errors import InputError
    from shrinkteanet.methods.base.terms import teacher_emb_size

    t_emb = teacher_emb_size(build.teacher, build.emb_size) if build.teacher is not None else build.emb_size
    if t_emb != int(build.emb_size):
        raise InputError(f"distill=adadistill: the teacher's embedding is {t_emb}-d, emb_size={build.emb_size}; "
                         "the teacher's embeddings are the student's class centres, so emb_size must equal the "
                         "teacher's")
    s, m1, m2, m3 = L.margin_params(build.cfg)
    head = AdaDistillHead(build.num_classes, build.emb_size, s=s, m1=m1, m2=m2, m3=m3,
                          weighted=bool(build.cfg.adadistill_weighted))
    head.initialize(ctx=build.ctx)
    return Classifier(head, "adadistill", 1.0, with_teacher=True)


METHOD = MethodDef(
    name="adadistill",
    summary="AdaDistill: margin softmax on EMA class centres of the teacher's embeddings, adaptive alpha",
    order=100,
    needs=Needs(teacher=True, emb=True),
    keys=dict(adadistill_weighted=True),
    defaults=dict(loss="arcface", margin_s=64.0, margin_m1=1.0, margin_m2=0.45, margin_m3=0.0),
    variants=(Variant("adadistill"),
              Variant("adadistill_cos", dict(loss="cosface", margin_m2=0.0, margin_m3=0.35))),
    study=(StudyRow("adadistill", "adadistill", "AdaDistill", order=62),),
    classifier=classifier,
)
