"""The networks of a run: the student ``EmbeddingNet`` of ``cfg.network`` at the method's input size,
and the frozen teacher read from its checkpoint (its network read from the ``-symbol.json`` and
checked against the parameters by ``methods.base.teacher_check``)."""
import mxnet as mx

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.utils import parse_model_arg
from shrinkteanet.methods.base import teacher_check
from shrinkteanet.methods.base.cached_teacher import CachedTeacher
from shrinkteanet.methods.base.registry import method_of, student_image_size, student_needs_taps, teacher_embedding_only
from shrinkteanet.model.checkpoint import read_raw_checkpoint
from shrinkteanet.model.network import EmbeddingNet, context_list, materialize


def build_networks(cfg, teacher_checkpoint=None, ctx=None, cached_emb_size=0):
    """``(student, teacher, teacher_fc7)`` for ``cfg``: the student ``EmbeddingNet``
    (``cfg.network``, ``cfg.net_opts``, at ``student_image_size(cfg)``, taps when the
    method's stage terms need them), Xavier-initialised as InsightFace's fresnet/MobileFaceNet
    (gaussian, fan-out, magnitude 2); the teacher from ``teacher_checkpoint`` ((prefix, epoch)
    or "PREFIX,EPOCH"; default ``cfg.teacher``) as ``load_teacher`` builds it, frozen; and its
    ``fc7_weight`` (None when the checkpoint has none).  No teacher for ``distill=none``.
    ``cached_emb_size`` (the teacher cache's width), with no teacher checkpoint named and a
    method that reads only the teacher's embedding (``registry.teacher_embedding_only``): no teacher
    is loaded, a ``methods.base.cached_teacher.CachedTeacher`` stands in for it."""
    ctx = context_list(ctx)
    needs = method_of(cfg).needs
    student_opts = dict(cfg.net_opts)
    student_opts["image_size"] = student_image_size(cfg)
    student = EmbeddingNet(cfg.network, emb_size=int(cfg.emb_size), with_taps=student_needs_taps(cfg),
                           prelu_as_conv=bool(cfg.get("prelu_as_conv", True)),
                           **student_opts)
    student.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=ctx)
    materialize(student, student_opts["image_size"], ctx[0])
    if not needs.teacher:
        return student, None, None
    ckpt = teacher_checkpoint if teacher_checkpoint is not None else cfg.teacher
    if not ckpt and cached_emb_size and teacher_embedding_only(cfg):
        return student, CachedTeacher(cached_emb_size), None
    if not ckpt:
        raise InputError(f"teacher: distill={cfg.distill} needs a teacher checkpoint (teacher=PREFIX,EPOCH)")
    teacher, fc7 = load_teacher(cfg, ckpt, ctx=ctx, with_taps=needs.taps)
    return student, teacher, fc7


def load_teacher(cfg, ckpt, *, ctx, with_taps):
    """``(teacher EmbeddingNet, fc7_weight or None)`` of the checkpoint ``ckpt``: its network read
    from its ``-symbol.json`` and checked against its parameters (``methods.base.teacher_check.teacher_plan``; the
    resolved ``teacher_network``/``teacher_net_opts``/``teacher_emb_size`` are written into
    ``cfg``), at ``cfg.image_size``, every parameter set, ``grad_req='null'``."""
    prefix, epoch = parse_model_arg(ckpt) if isinstance(ckpt, str) else ckpt
    graph, arg_params, aux_params = read_raw_checkpoint(prefix, epoch)
    shapes = ({k: v.shape for k, v in arg_params.items()}, {k: v.shape for k, v in aux_params.items()})
    plan = teacher_check.teacher_plan(cfg, graph, *shapes, image_size=int(cfg.image_size), where=f"{prefix},{epoch}")
    teacher_check.fill_config(cfg, plan)
    t_opts = dict(plan.opts)
    t_opts.setdefault("image_size", int(cfg.image_size))
    teacher = EmbeddingNet(plan.network, emb_size=plan.emb_size, with_taps=with_taps, **t_opts)
    teacher.set_params(arg_params, aux_params, ctx=ctx)
    for p in teacher.collect_params().values():
        p.grad_req = "null"
    fc7 = arg_params.get("fc7_weight")
    return teacher, (fc7.as_in_context(ctx[0]) if fc7 is not None else None)
