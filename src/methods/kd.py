"""Hinton et al. 2015 ("Distilling the knowledge in a neural network") on the margin logits.

``softmax`` + ``kd`` = ``kd_lambda * T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, z_t from the
teacher's embedding and its own ``fc7_weight`` with the same margin as the student head; plus an
embedding term when ``kd_emb_loss`` is ``angular`` (``angular_4``) or ``l2`` (``l2``), weight
``kd_emb_lambda``.
"""
from shrinkteanet.methods.base import soft_targets
from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant

METHOD = MethodDef(
    name="kd",
    summary="Hinton KD: soft targets from the teacher's margin logits",
    order=30,
    needs=Needs(teacher=True, emb=True, fc7=True),
    keys=dict(soft_targets.KEYS),
    variants=(Variant("kd"),),
    study=(StudyRow("kd", "kd", "Hinton KD", order=50),),
    terms=soft_targets.soft_target_terms,
    check=soft_targets.check_emb_loss,
    same_embedding=soft_targets.same_embedding,
)
