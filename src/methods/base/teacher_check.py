"""The teacher as its checkpoint says it is: network, sizes and classifier, checked before any data.

``teacher_plan`` reads the network from the checkpoint's ``-symbol.json`` (``symbols.infer``:
InsightFace's fresnet r18..r100 and fmobilefacenet ``y1``, and this package's own checkpoints),
takes ``teacher_network``/``teacher_net_opts``/``teacher_emb_size`` where the config gives them
and checks the built network against the checkpoint's parameters, name by name and shape by
shape: a teacher that disagrees, or that would leave a checkpoint parameter unused (``fc7*``,
the margin head, apart), is refused in one line, never cut (an r100 read as its r90 prefix).

``check_classifier`` and ``check_embedding_sizes`` hold the rules of the methods that share the
teacher's classifier (kd: its logits; margin: its centres as the student's, Svitov & Alyamkin
2020) and of differing embedding sizes (ShrinkTeaNet Sec. 3.3: the student's final feature is
mapped by a 1x1 conv + BN "to match the dimension"; see ``terms.StageTerms``).
No MXNet at import.
"""
import dataclasses

from shrinkteanet.core.errors import InputError


@dataclasses.dataclass(frozen=True)
class TeacherPlan:
    """What to build: registry ``network``, ``emb_size``, family ``opts``; ``inferred`` is the
    ``symbols.infer.Inferred`` read from the symbol (None for a family it cannot read)."""

    network: str
    emb_size: int
    opts: dict
    inferred: object = None


def _given(cfg):
    """(teacher_network canonical or '', teacher_net_opts dict, teacher_emb_size or 0) of the config."""
    from shrinkteanet.symbols.registry import canonical_name

    return (canonical_name(str(cfg.get("teacher_network") or "")), dict(cfg.get("teacher_net_opts") or {}),
            int(cfg.get("teacher_emb_size") or 0))


def _choose(cfg, inferred, arg_shapes, where):
    """The plan from the config where it speaks and from the checkpoint where it does not."""
    net, opts, emb = _given(cfg)
    if inferred is None:
        if not net:
            raise InputError(f"teacher={where}: its symbol is neither fresnet nor fmobilefacenet, so its network "
                             "cannot be read from it; set teacher_network")
        rows = arg_shapes.get("pre_fc1_weight")
        return TeacherPlan(net, emb or (int(rows[0]) if rows else 512), opts, None)
    chosen_opts = opts if (net or opts) else dict(inferred.opts)
    return TeacherPlan(net or inferred.network, emb or inferred.emb_size, chosen_opts, inferred)


def expected_shapes(plan, image_size):
    """(arg name -> shape, aux name -> shape) of the plan's network at ``image_size``."""
    from shrinkteanet.symbols import get_symbol
    from shrinkteanet.symbols.measure import param_shapes

    opts = dict(plan.opts)
    opts.setdefault("image_size", int(image_size))
    sym = get_symbol(plan.network, emb_size=plan.emb_size, **opts)
    args, aux = param_shapes(sym, opts["image_size"])
    args.pop("data", None)
    return args, aux


def _differences(expected, found):
    """(missing, unused, wrong shape) names between two ``{name: shape}`` dicts (fc7* ignored)."""
    from shrinkteanet.symbols.measure import is_classifier_param

    found = {k: tuple(v) for k, v in found.items() if not is_classifier_param(k)}
    expected = {k: tuple(v) for k, v in expected.items()}
    missing = sorted(set(expected) - set(found))
    unused = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    return missing, unused, [(k, expected[k], found[k]) for k in wrong]


def _detail(missing, unused, wrong):
    parts = []
    if unused:
        parts.append(f"{len(unused)} checkpoint parameters unused, e.g. {unused[0]!r}")
    if missing:
        parts.append(f"{len(missing)} parameters missing from it, e.g. {missing[0]!r}")
    if wrong:
        name, want, have = wrong[0]
        parts.append(f"{len(wrong)} of another shape, e.g. {name!r} {have} where the network has {want}")
    return "; ".join(parts)


def teacher_plan(cfg, graph, arg_shapes, aux_shapes, *, image_size, where):
    """The ``TeacherPlan`` of the checkpoint ``where`` (symbol ``graph``, parameter shapes) for
    faces of ``image_size``; ``InputError`` in one line when the config's teacher options
    disagree with it or the network would not use every parameter (``fc7*`` apart)."""
    from shrinkteanet.symbols.infer import infer_network
    from shrinkteanet.symbols.tables import final_size

    try:
        inferred = infer_network(graph)
    except ValueError as e:
        raise InputError(f"teacher={where}: {e}") from None
    plan = _choose(cfg, inferred, arg_shapes, where)
    try:
        want_args, want_aux = expected_shapes(plan, image_size)
    except (ValueError, TypeError, AssertionError) as e:
        raise InputError(f"teacher_network={plan.network} teacher_net_opts={plan.opts}: {e}") from None
    missing, unused, wrong = _differences({**want_args, **want_aux}, {**arg_shapes, **aux_shapes})
    if not (missing or unused or wrong):
        return plan
    net, opts, emb = _given(cfg)
    seen = inferred.describe() if inferred is not None else "its parameters"
    if net or opts or emb:
        raise InputError(f"teacher_network={net or '(from the checkpoint)'} teacher_net_opts={opts} "
                         f"teacher_emb_size={emb or '(from the checkpoint)'} disagrees with the checkpoint "
                         f"{where}, a {seen}: {_detail(missing, unused, wrong)}")
    head = {"pre_fc1_weight", "conv_6dw7_7_conv2d_weight"}
    if not (missing or unused) and {k for k, _, _ in wrong} <= head:
        raise InputError(f"teacher={where}: a {seen} whose output unit takes other faces than image_size="
                         f"{image_size} (final map {final_size(image_size)}): {_detail(missing, unused, wrong)}")
    raise InputError(f"teacher={where}: the {seen} read from its symbol does not match its parameters "
                     f"({_detail(missing, unused, wrong)}); refused rather than cut")


def fill_config(cfg, plan):
    """Write the resolved teacher into ``cfg`` (printed by ``shrinkteanet config``, saved with the run)."""
    from easydict import EasyDict

    cfg.teacher_network = plan.network
    cfg.teacher_net_opts = EasyDict(plan.opts)
    cfg.teacher_emb_size = int(plan.emb_size)


#: what a method reads from the teacher's classifier, for messages
_FC7_USE = {"kd": "its logits (soft targets)", "margin": "its class centres (the student's fixed centres)"}


def check_classifier(cfg, needs, fc7_shape, num_classes, where):
    """A method that reads the teacher's ``fc7_weight`` (``needs.fc7``) gets one, with one row per
    class of the training data (``num_classes``, 0 = unknown yet)."""
    if not needs.fc7:
        return
    use = _FC7_USE.get(cfg.distill, "its logits or class centres")
    if fc7_shape is None:
        raise InputError(f"distill={cfg.distill} reads the teacher's classifier ({use}), but teacher={where} has "
                         "no fc7_weight (an fc1-only release); use a method without it: stn, stn_final, l2, hint")
    if num_classes and int(fc7_shape[0]) != int(num_classes):
        raise InputError(f"teacher={where}: fc7_weight has {int(fc7_shape[0])} classes, the training data "
                         f"{int(num_classes)} (distill={cfg.distill} reads {use})")


def check_embedding_sizes(cfg, definition, teacher_emb):
    """``emb_size`` may differ from the teacher's for the stage methods (final 1x1 conv + BN adapter,
    ShrinkTeaNet Sec. 3.3), hints (stage features only) and kd's soft targets (each network its own
    classifier); not where the method says the two must agree (``MethodDef.same_embedding``: the
    two embeddings meet directly, or the teacher's parameters are copied)."""
    student_emb = int(cfg.emb_size)
    if not definition.needs.teacher or int(teacher_emb) == student_emb or definition.same_embedding is None:
        return
    why = definition.same_embedding(cfg)
    if why is not None:
        setting, reason = why
        raise InputError(f"{setting}: the teacher's embedding is {int(teacher_emb)}-d, emb_size={student_emb}; "
                         f"{reason}")
