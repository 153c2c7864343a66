""""Student-1" of ShrinkTeaNet Sec. 4.3: Eq. 7 with the l2 distance.

``softmax`` + ``l2`` = ``l2_lambda * ||s - t||^2`` of the final embeddings (paper: 0.001) + ``l2_i``
(i = 1..3) through the adapters H_i and the teacher's tails, weights ``l2_lambda * lambda_i``.
Variants: ``l2`` (all four stages) and ``l2_final`` (the final-embedding term only).
"""
from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant
from shrinkteanet.methods.base import stage_rules
from shrinkteanet.methods.base.stage_rules import LAST_STAGE, has_intermediate_stages


def part_name(stage):
    return "l2" if stage == LAST_STAGE else f"l2_{stage}"


def terms(build):
    """The l2 stage terms (Eq. 7 with ||s - t||^2 in place of the angular loss)."""
    from shrinkteanet.methods.base import blocks as L
    from shrinkteanet.methods.base.terms import StageTerms

    return [StageTerms(build, distance=L.L2EmbeddingLoss(), base=build.cfg.l2_lambda, part_name=part_name)]


METHOD = MethodDef(
    name="l2",
    summary='"Student-1" (Sec. 4.3): Eq. 7 with the l2 distance',
    order=20,
    needs=Needs(teacher=True, emb=True),
    keys=dict(stage_rules.KEYS, l2_lambda=0.001),
    variants=(Variant("l2"), Variant("l2_final", dict(distill_stages=[4]))),
    study=(StudyRow("l2", "l2", "Student-1 (L2)", order=10, paper="Student-1 (L2 loss)"),
           StudyRow("l2_final", "l2_final", "L2, final embedding only", order=20)),
    terms=terms,
    student_taps=has_intermediate_stages,
)
