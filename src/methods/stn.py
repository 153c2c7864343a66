"""ShrinkTeaNet (Duong et al. 2019, Eq. 4-7): ``softmax`` + ``angular_i`` for i in ``distill_stages``.

``angular_4`` is Eq. 4/5 on the final embeddings, ``(1 - cos(s, t))**2``; ``angular_i`` (i < 4) is
Eq. 6: student stage i -> adapter H_i (1x1 conv + BN to the teacher's channels) -> the teacher's
frozen blocks after stage i -> angular loss against the teacher's final embedding of the same image
(``[T_{i+1} o .. o T_n](F_i^t)`` *is* that embedding).  Weights ``stn_weight * lambda_i``,
lambda_4 = 1, lambda_i = lambda_{i+1} / 2 by stage number (Sec. 4.2, ``stages.distill_lambdas``).
Variants: ``stn`` (all four stages, Eq. 7) and ``stn_final`` (stage 4 only, Eq. 5); the study also
runs both at ``stn_weight=10`` (the weight ablation; ``distill_weight``, its old name, is still accepted).
"""
from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant
from shrinkteanet.methods.base import stage_rules
from shrinkteanet.methods.base.stage_rules import has_intermediate_stages


def part_name(stage):
    return f"angular_{stage}"


def terms(build):
    """The angular stage terms of Eq. 7."""
    from shrinkteanet.methods.base import blocks as L
    from shrinkteanet.methods.base.terms import StageTerms

    return [StageTerms(build, distance=L.AngularDistillationLoss(), base=build.cfg.stn_weight,
                       part_name=part_name)]


METHOD = MethodDef(
    name="stn",
    summary="ShrinkTeaNet: angular loss at the final embedding and through the teacher's tails (Eq. 7)",
    order=10,
    needs=Needs(teacher=True, emb=True),
    keys=dict(stage_rules.KEYS, stn_weight=1.0),
    variants=(Variant("stn"), Variant("stn_final", dict(distill_stages=[4]))),
    study=(StudyRow("stn_final", "stn_final", "ShrinkTeaNet, final stage only (Eq. 5)", order=30),
           StudyRow("stn", "stn", "ShrinkTeaNet", order=40, paper="ShrinkTeaNet"),
           # the paper's lambda_n = 1 against 10: the rows below are the weight ablation, in this order
           StudyRow("stn_w10", "stn", "ShrinkTeaNet, weight 10", order=80, overrides=("stn_weight=10",),
                    ablation_of="stn"),
           StudyRow("stn_final_w10", "stn_final", "ShrinkTeaNet final only, weight 10", order=70,
                    overrides=("stn_weight=10",), ablation_of="stn_final")),
    terms=terms,
    student_taps=has_intermediate_stages,
)
