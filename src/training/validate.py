"""``validate(cfg)``: every check ``train`` makes before it touches data, in one place.

``shrinkteanet config``, the recipes' ``--dry-run`` (through ``config``) and ``train.train`` run
the same list, so that ``train`` refuses nothing later that ``config`` accepted.  ``CHECKS`` is
a tuple of ``(name, check)``; each ``check(cfg, facts)`` raises ``InputError`` in one line
naming the key, and may fill ``facts`` (``image_size``, ``num_classes`` of the data when its
``property`` is there; ``teacher``, the resolved ``methods.base.teacher_check.TeacherPlan``) for the
checks after it.  Adding a check is adding one row.

Only metadata is read: the data folder's ``property`` (when present; its absence is the
loader's to report), and the teacher checkpoint's ``-symbol.json`` and ``.params``.
"""
import math
import os

from shrinkteanet.core.errors import InputError

#: key -> (test, what it must be): the numbers a typo or a sign slip makes meaningless.
_HYPERPARAMETER_RULES = {
    "lr": (lambda v: v > 0, "a finite number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a finite number in [0, 1)"),
    "wd": (lambda v: v >= 0, "a finite number >= 0"),
    "lr_factor": (lambda v: 0 < v <= 1, "a finite number in (0, 1]"),
    "lr_min": (lambda v: v >= 0, "a finite number >= 0"),
    "emb_size": (lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    "batch_size": (lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    "warmup_batches": (lambda v: v >= 0, "a whole number >= 0"),
    "fc7_lr_mult": (lambda v: v >= 0, "a finite number >= 0"),
    "fc7_wd_mult": (lambda v: v >= 0, "a finite number >= 0"),
}


def check_hyperparameters(cfg, facts=None):
    """``InputError`` naming the key for a NaN/inf or out-of-range optimiser or network number
    (MXNet would fail deep inside, or, for ``lr=-1`` and ``momentum=5``, train on silently)."""
    for key, (ok, what) in _HYPERPARAMETER_RULES.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise InputError(f"config {key}={value!r}: must be {what}")
    from shrinkteanet.training.schedule import cfg_lr_steps

    cfg_lr_steps(cfg)  # lr_steps, lr_step_unit, lr_step_batch: refused here, before any data


def check_names(cfg, facts):
    """``network``, ``teacher_network`` (empty: from the checkpoint), ``loss`` and ``distill`` name
    registered rows (InsightFace aliases accepted); the method's own config check passes."""
    from shrinkteanet.methods.base.registry import method_of
    from shrinkteanet.symbols.registry import canonical_name, unknown_network_message, REGISTRY
    from shrinkteanet.training.config import LOSSES

    for key in ("network", "teacher_network"):
        value = str(cfg.get(key) or "")
        if (value or key == "network") and canonical_name(value) not in REGISTRY:
            raise InputError(f"config {key}={value!r}: {unknown_network_message(value)}")
    if cfg.get("loss") not in LOSSES:
        raise InputError(f"config loss={cfg.get('loss')!r}: unknown; valid: {', '.join(sorted(LOSSES))}")
    method_of(cfg)


def check_stages(cfg, facts):
    """``distill_stages`` of the stage methods (stn, l2, hint): distinct stages of 1..4, with
    one ``distill_lambdas`` value each when given."""
    from shrinkteanet.methods.base import stage_rules
    from shrinkteanet.methods.base.registry import method_of

    if "distill_stages" in method_of(cfg).keys:
        stage_rules.check_stages(cfg)
        stage_rules.distill_lambdas(cfg)


def check_data_facts(cfg, facts):
    """``image_size``/``num_classes`` as the data's ``property`` says (train follows the data),
    else the config's; the student's input size (``lowres_size``) against them."""
    from shrinkteanet.methods.base.registry import student_image_size

    facts["image_size"], facts["num_classes"] = int(cfg.image_size), int(cfg.num_classes or 0)
    prop = os.path.join(str(cfg.get("data_dir") or ""), "property")
    if cfg.get("data_dir") and os.path.isfile(prop):
        from shrinkteanet.data.recordio import read_property

        facts["num_classes"], facts["image_size"], _ = read_property(prop)
    student_image_size(dict_with(cfg, image_size=facts["image_size"]))


def check_student(cfg, facts):
    """``net_opts`` are options of ``network``'s family (the builder's own check)."""
    if not cfg.get("net_opts"):
        return
    from shrinkteanet.symbols.registry import get_spec

    opts = {k: v for k, v in dict(cfg.net_opts).items() if k != "dtype"}
    try:
        get_spec(cfg.network).build(int(cfg.emb_size), opts)
    except (TypeError, ValueError) as e:
        raise InputError(f"config network={cfg.network} net_opts={dict(cfg.net_opts)}: {e}") from None


def check_teacher(cfg, facts):
    """The teacher checkpoint of a method that needs one: its network read from its symbol and
    checked against its parameters and the config (``methods.base.teacher_check.teacher_plan``; the resolved
    teacher is written into ``cfg``), its classifier against the method and the data's classes,
    and its embedding width against ``emb_size``.  A missing ``teacher`` is refused unless
    ``teacher_pending`` (the recipes' dry run before the teacher is trained) or when the teacher
    cache serves every teacher embedding the method reads (``registry.teacher_embedding_only``)."""
    from shrinkteanet.methods.base import teacher_check
    from shrinkteanet.methods.base.registry import method_of, teacher_embedding_only

    definition = method_of(cfg)
    needs = definition.needs
    if not needs.teacher:
        return
    if not cfg.get("teacher"):
        if facts.get("teacher_pending") or (cfg.get("teacher_cache") and teacher_embedding_only(cfg)):
            return  # not trained yet, or not needed: the cache serves every teacher embedding
        raise InputError(f"teacher: distill={cfg.distill} needs a teacher checkpoint (teacher=PREFIX,EPOCH)"
                         + _cache_hint(cfg))
    from shrinkteanet.core.utils import parse_model_arg
    from shrinkteanet.model.checkpoint import read_raw_checkpoint

    prefix, epoch = parse_model_arg(cfg.teacher)
    graph, arg, aux = read_raw_checkpoint(prefix, epoch)
    where = f"{prefix},{epoch}"
    shapes = ({k: v.shape for k, v in arg.items()}, {k: v.shape for k, v in aux.items()})
    plan = teacher_check.teacher_plan(cfg, graph, *shapes, image_size=facts["image_size"], where=where)
    teacher_check.fill_config(cfg, plan)
    facts["teacher"] = plan
    fc7 = arg.get("fc7_weight")
    teacher_check.check_classifier(cfg, needs, None if fc7 is None else fc7.shape, facts["num_classes"], where)
    teacher_check.check_embedding_sizes(cfg, definition, plan.emb_size)


def _cache_hint(cfg):
    """What a teacher cache could do for ``cfg`` (part of the missing-teacher message)."""
    from shrinkteanet.methods.base.registry import teacher_embedding_only

    if teacher_embedding_only(cfg):
        return " or a teacher cache (--teacher-cache)"
    if cfg.get("teacher_cache"):
        return "; the teacher cache alone cannot serve it (it needs the teacher's stage features, tails or fc7)"
    return ""


#: ``--kvstore`` values a run can use; the one-line refusals of those this package cannot run
KVSTORES = ("device", "local", "dist_sync", "dist_device_sync", "horovod")
REFUSED_KVSTORES = {
    "dist_async": "asynchronous updates run on the servers (update_on_kvstore=True), where the NaN guard "
                  "cannot veto a step and Trainer.save_states cannot save the optimizer state; use dist_sync "
                  "or, on GPUs, dist_device_sync",
}


def check_kvstore_name(cfg, facts=None):
    """``kvstore`` names a store of ``KVSTORES`` (empty/``none``: no store); ``dist_async`` is
    refused (``REFUSED_KVSTORES``).  Whether horovod is importable is ``train.check_kvstore``'s."""
    name = cfg.get("kvstore")
    if name in ("", "none", None) or name in KVSTORES:
        return
    if name in REFUSED_KVSTORES:
        raise InputError(f"--kvstore {name}: not supported: {REFUSED_KVSTORES[name]}")
    raise InputError(f"--kvstore {name!r}: expected {', '.join(KVSTORES)}")


#: the checks, in order; each ``(name, check(cfg, facts))``
CHECKS = (
    ("kvstore", check_kvstore_name),
    ("hyperparameters", check_hyperparameters),
    ("names", check_names),
    ("stages", check_stages),
    ("sizes", check_data_facts),
    ("student", check_student),
    ("teacher", check_teacher),
)


def validate(cfg, checks=CHECKS, *, teacher_pending=False):
    """Run every check of ``checks`` on ``cfg`` (see the module docstring); returns the facts
    found (``image_size``, ``num_classes``, ``teacher``).  ``InputError`` from the first that fails.
    ``teacher_pending``: a method's teacher checkpoint may be unset (not trained yet)."""
    facts = {"teacher_pending": bool(teacher_pending)}
    for _, check in checks:
        check(cfg, facts)
    return facts


def dict_with(cfg, **changes):
    """A shallow copy of ``cfg`` (an EasyDict) with ``changes``."""
    from easydict import EasyDict

    out = EasyDict(dict(cfg))
    out.update(changes)
    return out
