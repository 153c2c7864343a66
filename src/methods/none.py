"""Self-studied student (``distill=none``): the margin head of ``cfg.loss`` alone, part ``softmax``.
The baseline every distilled student of the study is paired with (ShrinkTeaNet Table 2)."""
from shrinkteanet.methods.base.registry import MethodDef, StudyRow, Variant

METHOD = MethodDef(
    name="none",
    summary="self-studied student: softmax of the margin head only",
    order=0,
    variants=(Variant("none", config="self"),),
    study=(StudyRow("self", "none", "Self-studied", order=0, paper="Self-Studied"),),
)
