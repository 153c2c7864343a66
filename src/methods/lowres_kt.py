"""Knowledge transfer of Karlekar et al. 2019 for a low-resolution student.

The student runs at ``lowres_size`` (``base.low_resolution``: the method downsamples the
full-resolution batch itself, so the teacher keeps seeing ``image_size``).  At build time
(``transfer``, the method's ``prepare`` step) it takes every teacher parameter whose name and shape
match (a fully convolutional body transfers entirely; resolution-dependent layers such as the 'E'
output FC keep their own init) and the teacher's class centres as the start of its head.
Loss: ``softmax``.
"""
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.methods.base import low_resolution
from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant

log = get_logger(__name__)


def transfer(build):
    """The ``prepare`` step: the head starts from the teacher's class centres, the student from
    every teacher parameter it shares by name and shape."""
    from shrinkteanet.methods.base.terms import load_centres
    from shrinkteanet.model.network import materialize

    load_centres(build.head, build)
    materialize(build.student, build.student_size, build.ctx[0])
    transfer_from_teacher(build.student, build.teacher)


def transfer_from_teacher(student, teacher):
    """Knowledge transfer of Karlekar et al. 2019: copy every teacher parameter whose
    name and shape the student shares (arguments and BatchNorm statistics).  Returns the
    names copied; InputError when nothing matches (different architectures)."""
    t_params = dict(teacher.collect_params().items())
    copied, skipped = [], []
    for name, p in student.collect_params().items():
        if name not in t_params:
            continue
        # a loaded teacher may not record .shape; its data does
        value = t_params[name].data(t_params[name].list_ctx()[0])
        if tuple(p.shape) == tuple(value.shape):
            p.set_data(value.astype(p.dtype))
            copied.append(name)
        else:
            skipped.append(name)
    total = len(list(student.collect_params().keys()))
    # output units share InsightFace's names (pre_fc1, fc1) across families: a few matches
    # between different architectures are not a transfer
    if 2 * len(copied) < total:
        raise InputError(f"distill=lowres_kt*: only {len(copied)} of {total} student parameters match the teacher "
                         "by name and shape (knowledge transfer needs the teacher's architecture: "
                         "network=teacher_network, same net_opts)")
    log.info("knowledge transfer: %d parameters from the teacher, %d kept (shape differs: %s)", len(copied),
             len(skipped), ", ".join(skipped[:4]))
    return copied


def same_embedding(cfg):
    """Copied parameters need the teacher's embedding width."""
    return (f"distill={cfg.distill}", "knowledge transfer copies the teacher's parameters, so emb_size must equal "
                                      "the teacher's")


METHOD = MethodDef(
    name="lowres_kt",
    summary="Karlekar et al. knowledge transfer to a low-resolution student",
    order=70,
    needs=Needs(teacher=True, fc7=True),
    defaults=dict(low_resolution.DEFAULTS),
    variants=(Variant("lowres_kt"),),
    student_size=low_resolution.student_size,
    prepare=transfer,
    same_embedding=same_embedding,
)
