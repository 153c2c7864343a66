"""Soft-target distillation (Hinton et al. 2015) as the ``kd``, ``lowres_kd`` and ``lowres_ktkd``
method modules declare it: their shared defaults, config check and term builder.  No MXNet at
import (``terms.SoftTargets`` is the term)."""
from shrinkteanet.core.errors import InputError

#: values of ``kd_emb_loss``: the optional embedding term added to the soft targets
EMB_LOSSES = ("none", "angular", "l2")

#: the config keys of the soft-target methods (``MethodDef.keys`` of kd, lowres_kd, lowres_ktkd): Hinton's
#: temperature and weight, and the optional embedding term (``kd_emb_loss`` of ``EMB_LOSSES``, its weight)
KEYS = dict(kd_temperature=4.0, kd_lambda=1.0, kd_emb_loss="none", kd_emb_lambda=1.0)


def check_emb_loss(cfg):
    """``kd_emb_loss`` is one of ``EMB_LOSSES`` (else ``InputError`` naming the key)."""
    if cfg.get("kd_emb_loss", "none") not in EMB_LOSSES:
        raise InputError(f"kd_emb_loss={cfg.kd_emb_loss!r}: expected none, angular or l2")


def same_embedding(cfg):
    """The embedding term compares the two embeddings directly: ``emb_size`` must then be the teacher's."""
    if cfg.get("kd_emb_loss", "none") == "none":
        return None
    return (f"distill={cfg.distill} kd_emb_loss={cfg.kd_emb_loss}",
            "the embedding term compares the two embeddings directly (set kd_emb_loss=none or emb_size)")


def emb_part_name(kind):
    """Part name of the embedding term: ``angular_4`` (Eq. 4/5) or ``l2`` (as the stage methods)."""
    return "l2" if kind == "l2" else f"{kind}_4"


def soft_target_terms(build):
    """``[soft targets] + [embedding term]``: the latter, weight ``kd_emb_lambda``, when
    ``kd_emb_loss`` is ``angular`` or ``l2``."""
    from shrinkteanet.methods.base.terms import EmbeddingTerm, SoftTargets, embedding_loss

    terms = [SoftTargets(build)]
    kind = build.cfg.get("kd_emb_loss", "none")
    if kind != "none":
        terms.append(EmbeddingTerm(emb_part_name(kind), build.cfg.kd_emb_lambda, embedding_loss(kind)))
    return terms
