"""FitNets-style hints (an ablation of ShrinkTeaNet's stage terms).

``softmax`` + ``hint_i`` = ``hint_lambda * lambda_i * mean((H_i(F_i^s) - F_i^t)^2)`` for i in
``distill_stages``: the adapted student stage against the teacher's stage feature itself (the
teacher runs with its taps every step).
"""
from shrinkteanet.methods.base import stage_rules
from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant


def part_name(stage):
    return f"hint_{stage}"


def terms(build):
    """A hint per stage: adapter H_i on the student's stage features, l2 to the teacher's."""
    from shrinkteanet.methods.base import blocks as L
    from shrinkteanet.methods.base.terms import StageTerms

    return [StageTerms(build, distance=L.HintLoss(), base=build.cfg.hint_lambda, part_name=part_name,
                       on_taps=True)]


def student_taps(cfg):
    """Every hint reads the student's stage features."""
    return True


METHOD = MethodDef(
    name="hint",
    summary="FitNets hints: adapted student stages against the teacher's stage features",
    order=50,
    needs=Needs(teacher=True, taps=True),
    keys=dict(stage_rules.KEYS, hint_lambda=1.0),
    variants=(Variant("hint"),),
    terms=terms,
    student_taps=student_taps,
)
