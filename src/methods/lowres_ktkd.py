"""Karlekar et al. 2019, both: knowledge transfer at build time (as ``lowres_kt``), soft-target
distillation while training (as ``lowres_kd``)."""
from shrinkteanet.methods.base import soft_targets
from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant

METHOD = MethodDef(
    name="lowres_ktkd",
    summary="Karlekar et al. transfer + distillation to a low-resolution student",
    order=90,
    needs=Needs(teacher=True, emb=True, fc7=True, lowres=True, transfer=True),
    defaults=dict(lowres_size=56, **soft_targets.DEFAULTS),
    variants=(Variant("lowres_ktkd"),),
    terms=soft_targets.soft_target_terms,
    check=soft_targets.check_emb_loss,
)
