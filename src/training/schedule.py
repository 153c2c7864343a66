"""Seeds and learning-rate schedules: pure functions of the config and the batch counter.

InsightFace's MXNet-era ``recognition/train.py`` steps the learning rate at batch counts
(``lr_steps``); ShrinkTeaNet Sec. 4.1 trains with SGD from lr 0.1.  Here the rate is a function
of the global batch counter only (gluoncv's ``LRSequential``), and every step's random seed a
function of ``(seed, epoch, batch)``, so that skipped steps and resumes never shift either.

``lr_steps`` are counted in ``lr_step_unit``: ``batch`` = batches of ``lr_step_batch`` images
(the paper's and InsightFace's global batch 512), rescaled to the run's own global batch as
InsightFace's ``train_softmax.py`` does (``int(step * 512 / batch_size)``); ``sample`` = images
seen; ``epoch`` = passes over the data.  ``resolve_lr_steps`` is the one conversion.
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


#: The units ``lr_steps`` may be counted in (config ``lr_step_unit``).
LR_STEP_UNITS = ("batch", "sample", "epoch")


def resolve_lr_steps(lr_steps, unit, *, global_batch, step_batch=0, batches_per_epoch=None):
    """``lr_steps`` in ``unit`` -> the global batch numbers at which the rate steps.

    ``batch``: batches of ``step_batch`` images (0: of the run's own ``global_batch``), i.e.
    ``step * step_batch // global_batch``, InsightFace's ``int(step * 512.0 / batch_size)``
    (100k at 512 = 400k at 128).  ``sample``: images, ``step // global_batch``.  ``epoch``:
    ``step * batches_per_epoch`` exactly (``None`` while the data are unread).  Whole numbers
    only; a bad value is an ``InputError`` naming the config key."""
    if unit not in LR_STEP_UNITS:
        raise InputError(f"config lr_step_unit={unit!r}: expected {', '.join(LR_STEP_UNITS)}")
    steps = [_whole(s, "lr_steps", lr_steps) for s in lr_steps]
    global_batch = _whole(global_batch, "batch_size", global_batch, least=1)
    if unit == "epoch":
        return None if batches_per_epoch is None else [s * int(batches_per_epoch) for s in steps]
    per_step = 1 if unit == "sample" else (_whole(step_batch, "lr_step_batch", step_batch) or global_batch)
    return [s * per_step // global_batch for s in steps]


def _whole(value, key, shown, least=0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < least:
        raise InputError(f"config {key}={shown!r}: expected whole numbers >= {least}")
    return int(value)


def cfg_lr_steps(cfg, batches_per_epoch=None, global_batch=None):
    """``resolve_lr_steps`` of a config: its ``lr_steps``, ``lr_step_unit``, ``lr_step_batch``
    at ``global_batch`` (default ``cfg.batch_size``, global in this package)."""
    return resolve_lr_steps(cfg.lr_steps, cfg.get("lr_step_unit", "batch"),
                            global_batch=cfg.batch_size if global_batch is None else global_batch,
                            step_batch=cfg.get("lr_step_batch", 0), batches_per_epoch=batches_per_epoch)


def schedule_record(cfg, batches_per_epoch=None, global_batch=None):
    """The resolved schedule as a run records it (``PREFIX-state.json`` and the train summary
    ``schedule``) and ``shrinkteanet config`` prints it: the steps as given, their unit and
    reference batch, the global batch, and ``lr_steps_batches`` (``None`` for epochs of unread data)."""
    global_batch = int(cfg.batch_size if global_batch is None else global_batch)
    return {"lr_schedule": cfg.lr_schedule, "lr_steps": [int(s) for s in cfg.lr_steps],
            "lr_step_unit": cfg.get("lr_step_unit", "batch"), "lr_step_batch": int(cfg.get("lr_step_batch", 0)),
            "global_batch": global_batch, "batches_per_epoch": batches_per_epoch,
            "lr_steps_batches": cfg_lr_steps(cfg, batches_per_epoch, global_batch)}


def describe_schedule(record):
    """One line of ``schedule_record``: what was given and the batches it resolves to."""
    given = ",".join(str(s) for s in record["lr_steps"]) or "none"
    unit = record["lr_step_unit"]
    if unit == "batch":
        given += f" batches of {record['lr_step_batch'] or record['global_batch']} images"
    else:
        given += f" {unit}s"
    got = record["lr_steps_batches"]
    where = ("batches " + (",".join(str(s) for s in got) or "none")) if got is not None else \
        "epochs x the batches per epoch of the data (known when train reads them)"
    return f"lr_steps ({record['lr_schedule']} schedule): {given} -> {where} at global batch {record['global_batch']}"


def total_batches(cfg, batches_per_epoch, global_batch=None):
    """Length of the run in batches: ``max_batches`` if set, else ``num_epochs`` whole
    epochs, else up to the last LR step (InsightFace ends ArcFace runs there)."""
    if cfg.max_batches and cfg.max_batches > 0:
        return int(cfg.max_batches)
    if cfg.num_epochs and cfg.num_epochs > 0:
        return int(cfg.num_epochs) * batches_per_epoch
    steps = cfg_lr_steps(cfg, batches_per_epoch, global_batch)
    if steps:
        return int(steps[-1])
    raise InputError("config: set num_epochs, max_batches or lr_steps to say how long to train")


def build_lr_schedule(cfg, batches_per_epoch, num_batches=None, global_batch=None):
    """``lr(global_batch)`` as a gluoncv ``LRSequential``: linear warm-up over
    ``warmup_batches`` from 0 to ``lr``, then ``step`` (factor ``lr_factor`` at each of
    ``lr_steps``, resolved by ``cfg_lr_steps`` at ``global_batch`` (default ``cfg.batch_size``),
    from the start of training) or ``cosine`` (down to ``lr_min`` at the end of the run)."""
    from gluoncv.utils import LRScheduler, LRSequential

    num_batches = num_batches or total_batches(cfg, batches_per_epoch, global_batch)
    warm = int(cfg.warmup_batches or 0)
    parts = []
    if warm > 0:
        parts.append(LRScheduler("linear", base_lr=0.0, target_lr=cfg.lr, niters=warm))
    rest = max(num_batches - warm, 1)
    mode = cfg.lr_schedule
    if mode == "step":
        # gluoncv counts steps from the start of its own piece; ours count from batch 0
        steps = [max(s - warm, 0) for s in cfg_lr_steps(cfg, batches_per_epoch, global_batch)]
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
