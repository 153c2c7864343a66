"""Karlekar et al. 2019, both: knowledge transfer at build time (as ``lowres_kt``), soft-target
distillation while training (as ``lowres_kd``)."""
from shrinkteanet.methods import _kd
from shrinkteanet.methods.registry import MethodDef, Needs, Variant

METHOD = MethodDef(
    name="lowres_ktkd",
    summary="Karlekar et al. transfer + distillation to a low-resolution student",
    order=90,
    needs=Needs(teacher=True, emb=True, fc7=True, lowres=True, transfer=True),
    defaults=dict(lowres_size=56, **_kd.DEFAULTS),
    variants=(Variant("lowres_ktkd"),),
    terms=_kd.soft_target_terms,
    check=_kd.check_emb_loss,
)
