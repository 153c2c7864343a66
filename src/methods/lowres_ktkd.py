"""Karlekar et al. 2019, both: knowledge transfer at build time (as ``lowres_kt``), soft-target
distillation while training (as ``lowres_kd``).  The transfer's rule (the embedding widths must
agree) comes first: it holds whatever ``kd_emb_loss`` is."""
from shrinkteanet.methods import lowres_kt
from shrinkteanet.methods.base import low_resolution, soft_targets
from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant

METHOD = MethodDef(
    name="lowres_ktkd",
    summary="Karlekar et al. transfer + distillation to a low-resolution student",
    order=90,
    needs=Needs(teacher=True, emb=True, fc7=True),
    keys=dict(soft_targets.KEYS),
    defaults=dict(low_resolution.DEFAULTS),
    variants=(Variant("lowres_ktkd"),),
    terms=soft_targets.soft_target_terms,
    check=soft_targets.check_emb_loss,
    student_size=low_resolution.student_size,
    prepare=lowres_kt.transfer,
    same_embedding=lowres_kt.same_embedding,
)
