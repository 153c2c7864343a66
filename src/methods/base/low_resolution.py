"""The low-resolution student of Karlekar et al. 2019 (``lowres_kt``, ``lowres_kd``, ``lowres_ktkd``):
its default size and the ``MethodDef.student_size`` hook.  No MXNet.

The student runs at ``lowres_size``; the method is given the full-resolution batch and the student
sees it area-averaged (``assembler.Method.student_input``), so the teacher and its cache keep
seeing ``image_size``.
"""
from shrinkteanet.core.errors import InputError

#: the low-resolution methods' side of the student's input (Karlekar et al.: 112 -> 56)
DEFAULTS = dict(lowres_size=56)


def student_size(cfg):
    """``lowres_size``, which must lie in 1..``image_size`` (``InputError`` naming it)."""
    size = int(cfg.lowres_size)
    if size <= 0 or size > int(cfg.image_size):
        raise InputError(f"lowres_size={size}: must be in 1..image_size ({cfg.image_size}) "
                         f"for distill={cfg.distill}")
    return size
