"""Knowledge distillation of Karlekar et al. 2019 for a low-resolution student.

Student at ``lowres_size``, teacher at the full resolution of the same images: ``softmax`` + ``kd``
(Hinton soft targets on the margin logits, as ``kd``), plus the ``kd_emb_loss`` embedding term.
"""
from shrinkteanet.methods.base import low_resolution, soft_targets
from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant

METHOD = MethodDef(
    name="lowres_kd",
    summary="Karlekar et al. soft-target distillation to a low-resolution student",
    order=80,
    needs=Needs(teacher=True, emb=True, fc7=True),
    keys=dict(soft_targets.KEYS),
    defaults=dict(low_resolution.DEFAULTS),
    variants=(Variant("lowres_kd"),),
    terms=soft_targets.soft_target_terms,
    check=soft_targets.check_emb_loss,
    student_size=low_resolution.student_size,
    same_embedding=soft_targets.same_embedding,
)
