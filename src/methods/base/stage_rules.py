"""Per-stage rules of ShrinkTeaNet's Eq. 7 (Duong et al. 2019, Sec. 4.2), shared by the stage
methods (``stn``, ``l2``, ``hint``) and the config checks.  No MXNet here."""
from shrinkteanet.core.errors import InputError

#: the number of the last stage (the final embedding) in every network of ``shrinkteanet.symbols``
LAST_STAGE = 4

#: the config keys of the stage methods (``MethodDef.keys`` of stn, l2, hint): every stage, and the
#: weights lambda_i = 0.5 ** (4 - i) of Eq. 7 when ``distill_lambdas`` is empty
KEYS = dict(distill_stages=[1, 2, 3, 4], distill_lambdas=[])


def distill_lambdas(cfg):
    """Per-stage weights of Eq. 7 (ShrinkTeaNet Sec. 4.2).

    Parameters
    ----------
    cfg : EasyDict
        With ``distill_stages`` and ``distill_lambdas``.

    Returns
    -------
    list of float
        lambda_4 = 1 and lambda_i = lambda_{i+1} / 2, i.e. ``0.5 ** (4 - i)`` for stage i,
        whichever stages are listed and in whatever order, unless ``distill_lambdas`` lists
        them (one per ``distill_stages`` entry).
    """
    stages = [int(s) for s in cfg.distill_stages]
    if cfg.distill_lambdas:
        if len(cfg.distill_lambdas) != len(stages):
            raise InputError(
                f"distill_lambdas has {len(cfg.distill_lambdas)} values for {len(stages)} distill_stages")
        return [float(x) for x in cfg.distill_lambdas]
    return [0.5 ** (LAST_STAGE - s) for s in stages]


def check_stages(cfg):
    """``cfg.distill_stages`` as ints: distinct stages of 1..4, else ``InputError``."""
    stages = [int(s) for s in cfg.distill_stages]
    if not stages or any(s not in range(1, LAST_STAGE + 1) for s in stages) or len(set(stages)) != len(stages):
        raise InputError(f"distill_stages={list(cfg.distill_stages)!r}: expected distinct stages from 1..4")
    return stages


def has_intermediate_stages(cfg):
    """True when ``distill_stages`` lists a stage before the final embedding (Eq. 6 terms, which
    need the student's stage features)."""
    return any(int(s) != LAST_STAGE for s in cfg.distill_stages)
