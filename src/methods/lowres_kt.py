"""Knowledge transfer of Karlekar et al. 2019 for a low-resolution student.

The student runs at ``lowres_size`` (the method downsamples the full-resolution batch itself, so the
teacher keeps seeing ``image_size``).  At build time it takes every teacher parameter whose name and
shape match (a fully convolutional body transfers entirely; resolution-dependent layers such as the
'E' output FC keep their own init) and the teacher's class centres as the start of its head.
Loss: ``softmax``.
"""
from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant

METHOD = MethodDef(
    name="lowres_kt",
    summary="Karlekar et al. knowledge transfer to a low-resolution student",
    order=70,
    needs=Needs(teacher=True, fc7=True, lowres=True, transfer=True),
    defaults=dict(lowres_size=56),
    variants=(Variant("lowres_kt"),),
)
