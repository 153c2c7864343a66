"""Seeds and learning-rate schedules: pure functions of the config and the batch counter.

InsightFace's MXNet-era ``recognition/train.py`` steps the learning rate at batch counts
(``lr_steps``); ShrinkTeaNet Sec. 4.1 trains with SGD from lr 0.1.  Here the rate is a function
of the global batch counter only (gluoncv's ``LRSequential``), and every step's random seed a
function of ``(seed, epoch, batch)``, so that skipped steps and resumes never shift either.
"""
import numpy as np

from shrinkteanet.core.errors import InputError


def step_seed(seed, epoch, batch):
    """A 31-bit seed that depends only on (seed, epoch, batch): dropout and any other
    in-graph randomness of a step are replayed exactly after a resume."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(batch)]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed):
    import random

    import mxnet as mx

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    mx.random.seed(seed)


def total_batches(cfg, batches_per_epoch):
    """Length of the run in batches: ``max_batches`` if set, else ``num_epochs`` whole
    epochs, else up to the last LR step (InsightFace ends ArcFace runs there)."""
    if cfg.max_batches and cfg.max_batches > 0:
        return int(cfg.max_batches)
    if cfg.num_epochs and cfg.num_epochs > 0:
        return int(cfg.num_epochs) * batches_per_epoch
    steps = _steps_in_batches(cfg, batches_per_epoch)
    if steps:
        return int(steps[-1])
    raise InputError("config: set num_epochs, max_batches or lr_steps to say how long to train")


def _steps_in_batches(cfg, batches_per_epoch):
    unit = cfg.get("lr_step_unit", "batch")
    if unit not in ("batch", "epoch"):
        raise InputError(f"config lr_step_unit={unit!r}: expected batch or epoch")
    steps = [int(s) for s in cfg.lr_steps]
    return [s * batches_per_epoch for s in steps] if unit == "epoch" else steps


def build_lr_schedule(cfg, batches_per_epoch, num_batches=None):
    """``lr(global_batch)`` as a gluoncv ``LRSequential``: linear warm-up over
    ``warmup_batches`` from 0 to ``lr``, then ``step`` (factor ``lr_factor`` at each of
    ``lr_steps``, counted in ``lr_step_unit``s from the start of training) or ``cosine``
    (down to ``lr_min`` at the end of the run)."""
    from gluoncv.utils import LRScheduler, LRSequential

    num_batches = num_batches or total_batches(cfg, batches_per_epoch)
    warm = int(cfg.warmup_batches or 0)
    parts = []
    if warm > 0:
        parts.append(LRScheduler("linear", base_lr=0.0, target_lr=cfg.lr, niters=warm))
    rest = max(num_batches - warm, 1)
    mode = cfg.lr_schedule
    if mode == "step":
        # gluoncv counts steps from the start of its own piece; ours count from batch 0
        steps = [max(s - warm, 0) for s in _steps_in_batches(cfg, batches_per_epoch)]
        # the piece must outlast the last step so that later batches keep the decayed lr
        rest = max(rest, (max(steps) + 1) if steps else 1)
        parts.append(LRScheduler("step", base_lr=cfg.lr, niters=rest, step_iter=steps or [rest + 1],
                                 step_factor=cfg.lr_factor))
    elif mode == "cosine":
        parts.append(LRScheduler("cosine", base_lr=cfg.lr, target_lr=cfg.get("lr_min", 0.0), niters=rest))
    elif mode == "constant":
        parts.append(LRScheduler("constant", base_lr=cfg.lr, niters=rest))
    else:
        raise InputError(f"config lr_schedule={mode!r}: expected step, cosine or constant")
    return LRSequential(parts)
