"""The training loop as one object in named phases (``Fit``), for teachers and every student method.

Phases, in order (``Fit.run``): ``build_trainer`` (SGD with momentum as InsightFace's
``recognition/train.py``, ShrinkTeaNet Sec. 4.1; parameters given their shapes and MXNet's
plain layout), ``start`` (a fresh run state, or ``resume`` from ``PREFIX-state.json`` and its
checkpoint, then the kvstore's initial broadcast), ``open_hooks`` (NaN guard, monitor), then
per batch ``train_batch`` = ``update`` (forward/backward over the contexts, reduce, check,
update or undo) and the after-step hooks ``observe`` (monitor, loss-curve point), callbacks and
``scheduled_checkpoint`` (verification on the ``.bin`` sets, checkpoints); at the end
``final_checkpoint`` and ``summary``.  Every piece of run state is an attribute: ``state`` is
what ``PREFIX-state.json`` holds.

Gradients are reduced first (``Trainer.allreduce_grads``) and checked for non-finite values
afterwards, so every worker sees the same verdict and skips the same updates; ``nan_guard``
skips in a row stop the run.  MXNet's and NumPy's generators are re-seeded from
``(seed, epoch, batch)`` before every step and the learning rate is a function of the global
batch counter, so a resumed CPU run replays the uninterrupted one bit for bit.
"""
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Mapping

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.finite import arrays_all_finite
from shrinkteanet.model import checkpoint
from shrinkteanet.model.checkpoint import STATE_SUFFIX, is_running_stat, student_params
from shrinkteanet.training.schedule import (build_lr_schedule, describe_schedule, schedule_record, step_seed,
                                            total_batches)

log = get_logger(__name__)

#: State keys a resume takes from ``PREFIX-state.json`` (the rest is the new run's).
RESUMED_KEYS = ("epoch", "batch", "step", "checkpoint", "kept", "best", "nonfinite_skipped")


class Job:
    """What the loop needs about the job: contexts, kvstore, rank."""

    def __init__(self, ctx_list, kvstore=None):
        self.ctx_list = list(ctx_list)
        self.kvstore = kvstore
        self.rank = getattr(kvstore, "rank", 0) if kvstore is not None else 0
        self.num_workers = getattr(kvstore, "num_workers", 1) if kvstore is not None else 1

    @property
    def distributed(self):
        """Several workers with their own data (per-worker losses and statistics)."""
        kind = getattr(self.kvstore, "type", "") if self.kvstore is not None else ""
        return "dist" in kind or kind == "horovod"

    @property
    def horovod(self):
        return isinstance(self.kvstore, Horovod)


class Horovod:
    """The ``--kvstore horovod`` job: ``horovod.mxnet`` initialised; rank and size are horovod's
    (MXNet 1.9.1 has no horovod kvstore: ``mx.kv.create('horovod')`` is a local store reporting
    rank 0 of 1).  ``fit`` builds ``hvd.DistributedTrainer`` and broadcasts rank 0's weights."""

    type = "horovod"

    def __init__(self, hvd):
        hvd.init()
        self.hvd = hvd
        self.rank, self.num_workers, self.local_rank = int(hvd.rank()), int(hvd.size()), int(hvd.local_rank())


class NonFiniteLossError(RuntimeError):
    """Raised after ``nan_guard`` consecutive non-finite steps; names the loss term."""

    def __init__(self, message, term):
        super().__init__(message)
        self.term = term


class StopTraining(Exception):
    """A callback may raise this to end the run cleanly (a checkpoint is written)."""


class NonFiniteGuard:
    """Counts non-finite steps; after ``limit`` in a row raises ``NonFiniteLossError``
    naming the first loss term that went non-finite (or ``gradient``)."""

    def __init__(self, limit):
        self.limit = int(limit)
        self.in_a_row = 0
        self.skipped = 0
        self.overflows = 0  # AMP overflow skips (also in ``skipped``)
        self.hopeless = 0  # overflows in a row at a loss scale of 1 or less

    def check(self, part_values, grads_finite, stats_finite=True):
        """True for a good step; ``stats_finite``: the BatchNorm running statistics after the
        forward pass (they can overflow while loss and gradients stay finite)."""
        bad = [k for k, v in part_values.items() if not math.isfinite(v)]
        if not bad and grads_finite and stats_finite:
            self.good()
            return True
        term = bad[0] if bad else ("gradient" if not grads_finite else "running statistics")
        self.in_a_row += 1
        self.skipped += 1
        log.warning("non-finite %s: update skipped (%d in a row, %d in all)", term, self.in_a_row, self.skipped)
        if self.limit > 0 and self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"loss term {term!r} was non-finite in {self.in_a_row} consecutive batches; stopping "
                f"(the last checkpoint holds the last good parameters)", term)
        return False


    def overflow(self, loss_scale):
        """Count one AMP overflow skip at ``loss_scale``.  AMP halves its scale after each
        overflow (2**16 down to 1 in 16 steps) and then overflows are no longer a scale search:
        after ``limit`` more in a row the gradients overflow float16 even unscaled, and the run,
        which would never update again, stops with one line (``NonFiniteLossError``)."""
        self.in_a_row += 1
        self.skipped += 1
        self.overflows += 1
        self.hopeless = self.hopeless + 1 if loss_scale <= 1.0 else 0
        log.info("AMP: float16 gradient overflow at loss scale %g: update skipped (%d in a row)", loss_scale,
                 self.in_a_row)
        if self.limit > 0 and self.hopeless >= self.limit:
            raise NonFiniteLossError(
                f"fp16: gradients overflowed float16 in {self.in_a_row} consecutive batches (loss scale down to "
                f"{loss_scale:g}); stopping: train without --fp16 or lower lr", "gradient")

    def good(self):
        """Count a good step (resets the runs of bad steps)."""
        self.in_a_row = 0
        self.hopeless = 0


class LossParts(Mapping):
    """One step's loss parts, ``{name: mean over the step's images}``, read from the device
    only when a value is asked for (all parts in one transfer).  The loop itself reads them
    every ``frequent`` steps (log line, curve point), so a step costs no host sync for them."""

    def __init__(self, sums, n):
        self._sums, self._n, self._values = sums, int(n), None

    def _read(self):
        if self._values is None:
            import mxnet as mx

            keys = list(self._sums)
            flat = mx.nd.concat(*[self._sums[k].reshape((1,)) for k in keys], dim=0).asnumpy() if keys else []
            self._values = OrderedDict((k, float(v) / self._n) for k, v in zip(keys, flat))
        return self._values

    def __getitem__(self, key):
        return self._read()[key]

    def __iter__(self):
        return iter(self._sums)

    def __len__(self):
        return len(self._sums)

    def arrays(self):
        """The per-part sums over the step's images (NDArrays of shape (1,) on the first device)."""
        return list(self._sums.values())


def autograd_backward(losses):
    """Backward of every context's (possibly AMP-scaled) loss."""
    from mxnet import autograd

    autograd.backward(losses)


def amp_scaled(losses, trainer):
    """``losses`` times AMP's current loss scale (``amp.scale_loss``, which also sets the
    trainer's rescale to undo it); call inside ``autograd.record()``."""
    from mxnet.contrib import amp

    with amp.scale_loss(losses, trainer) as scaled:
        return list(scaled)


class Monitor:
    """Progress bar (img/s, lr, each loss term), periodic log lines and TensorBoard scalars."""

    def __init__(self, total, initial, *, frequent=20, tensorboard="", enabled=True):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, disable=not enabled or None,
                        desc="train")
        self.frequent = max(int(frequent), 1)
        self.writer = None
        self.event_files = []  # the files the writer created (the run's manifest lists them)
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            before = set(os.listdir(tensorboard)) if os.path.isdir(tensorboard) else set()
            self.writer = SummaryWriter(tensorboard)
            self.event_files = [os.path.join(tensorboard, n) for n in sorted(set(os.listdir(tensorboard)) - before)]
        self.t_last = time.time()
        self.n_last = 0

    def step(self, step, *, lr, parts, speed, skipped):
        """One step on the bar; every ``frequent`` steps (the only time the loss values are read
        from the device) the bar's loss figures, the log line and the TensorBoard scalars."""
        self.bar.update(1)
        if step % self.frequent:
            return
        post = OrderedDict(ips=f"{speed:.1f}", lr=f"{lr:.4g}")
        for k, v in parts.items():
            post[k] = f"{v:.4f}"
        self.bar.set_postfix(post, refresh=False)
        terms = " ".join(f"{k}={v:.5f}" for k, v in parts.items())
        log.info("batch %d lr %.5g %.1f img/s %s skipped=%d", step, lr, speed, terms, skipped)
        if self.writer is not None:
            for k, v in parts.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            self.writer.add_scalar("lr", lr, step)
            self.writer.add_scalar("img_per_s", speed, step)
            self.writer.add_scalar("nonfinite_skipped", skipped, step)

    def scalars(self, tag, values, step):
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{tag}/{k}", v, step)

    def close(self):
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _split(array, ctx_list, dtype=None):
    import mxnet as mx

    if array is None:
        return [None] * len(ctx_list)
    nd = mx.nd.array(array, dtype=dtype or array.dtype)
    if len(ctx_list) == 1:
        return [nd.as_in_context(ctx_list[0])]
    return mx.gluon.utils.split_and_load(nd, ctx_list, even_split=False)


def window_means(window):
    """The mean of each loss part over the ``window`` of good steps (the parts of its last step)."""
    return OrderedDict((k, float(np.mean([w[k] for w in window]))) for k in window[-1])


def final_losses(window, state):
    """The summary's losses: the mean of each part over the last ``frequent`` good steps.  A run
    resumed at its end (a finished checkpoint copied to a new folder) trains no step; the saved
    curve's point at the final step is that same window's mean, so it stands in (empty when the
    last step was not a curve point)."""
    if window:
        return window_means(window)
    curve = state.get("curve") or []
    if curve and curve[-1]["step"] == state["step"]:
        return OrderedDict((k, v) for k, v in curve[-1].items() if k not in ("step", "lr"))
    return OrderedDict()


def record_curve_point(state, window, lr):
    """Append the loss curve's point at ``state['step']``: the mean of each loss part over the
    last ``frequent`` good steps (the ``window``) and the lr.  Kept in the run state, so a
    resumed run continues the same curve (``summary['curve']``, the study's convergence test)."""
    if not window:
        return
    point = {"step": int(state["step"]), "lr": float(lr), **window_means(window)}
    state.setdefault("curve", []).append(point)


def check_resume_visible(prefix, job):
    """``--resume`` of a job with several workers: every worker reads ``PREFIX-state.json`` and the
    checkpoint's ``.params``/``.head.params``/``.states``, which worker 0 alone writes, so ``--out`` must
    be a folder every machine shares.  A worker that cannot see one of them refuses in one line.
    (A worker holding an older copy of its own is not detected: rank 0's weights are broadcast at
    the start anyway, but its position and momentum would be the old ones.)"""
    import socket

    if job.num_workers <= 1:
        return
    saved = checkpoint.read_state(prefix)
    files = [prefix + STATE_SUFFIX] if saved is None else checkpoint.training_paths(prefix, saved["checkpoint"])
    missing = next((f for f in files if not os.path.exists(f)), None)
    if missing:
        raise InputError(f"--resume: worker {job.rank} of {job.num_workers} ({socket.gethostname()}) cannot see "
                         f"{missing}: resuming a multi-machine run needs --out on a folder every worker shares "
                         "(worker 0 alone writes the run's files)")


def sync_initial_params(trainer, job):
    """Start the Trainer's kvstore and finish its initial broadcast *before* the first step.

    Gluon's Trainer does this lazily, inside the first ``allreduce_grads()``:
    ``kvstore.broadcast(i, weight)`` (``init`` by rank 0, then a ``pull`` of rank 0's
    value into every worker's weight) immediately followed by ``pushpull(i, grad)`` on
    the same key.  MXNet's dist kvstore orders a worker's requests on one key only
    through the engine variable of the buffer it uses, and those differ here: the pull
    lands in the weight (rank 0) or in a fresh receive buffer (other ranks), the
    pushpull in the gradient.  With the threaded engine the two requests race, and when
    the pushpull reaches the server first (once every worker's gradient is in, the
    server's value for the key *becomes* the summed gradient) the late pull copies
    that sum into the weight.  Measured with the 2-worker launch test (instrumented, 2
    of 18 runs): after step 1 rank 0's ``res_5_block0_conv_sep_conv2d_weight`` and
    ``..._batchnorm_gamma`` equalled the reduced gradient bit for bit while rank 1 held
    the true initial weight, the reduced gradients themselves being equal on both; the
    workers then trained on apart.  NaiveEngine runs every op in order and hid it.  Running the broadcast here
    and waiting for it (``waitall`` returns only once every pull's answer is written)
    means no gradient round can overtake it.  ``_init_kvstore``/``_init_params`` are
    what ``Trainer.allreduce_grads``/``load_states`` call themselves; MXNet 1.x has no
    public way to trigger them without a step."""
    import mxnet as mx

    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    # a parameter still waiting for its shape would be broadcast inside the first step again
    pending = [p.name for p in trainer._params_to_init]
    if pending and job.distributed:
        raise RuntimeError(f"parameters without a shape before the first step: {', '.join(pending[:5])} "
                           "(the dist kvstore would race their initial broadcast against the gradients)")
    mx.nd.waitall()


def _default_layout(params):
    """Give every trainable CPU parameter fresh arrays in MXNet's plain (row-major) layout.

    ``_materialize`` runs in predict mode, and MKLDNN's inference convolution then
    re-lays its weight array out in place in its own blocked format (to skip the reorder
    on later calls; a training-mode forward switches it back).  The dist kvstore reads
    weights through ``NDArray::data()``, which refuses MKLDNN-laid-out arrays ("We can't
    generate TBlob for MKLDNN data") on an engine thread: rank 0's initial push of the
    first conv weight then never reaches the server, and a worker's pull of it aborts the
    server ("init 2 first"; gone with ``MXNET_MKLDNN_ENABLED=0``).  ``Parameter.reset_ctx`` copies each array into a newly
    allocated plain one (the copy reorders; the values are unchanged bit for bit)."""
    for p in params.values():
        ctxs = p.list_ctx()
        if ctxs and all(c.device_type == "cpu" for c in ctxs):
            p.reset_ctx(ctxs)


def _materialize(method, loader, ctx_list, teacher_cache):
    """One forward pass in predict mode on zeros, so that every deferred parameter of the
    SymbolBlocks gets its shape before the Trainer (or a resume) touches it.  Predict mode
    leaves BatchNorm statistics alone and nothing random runs, so training is unaffected."""
    import mxnet as mx
    from mxnet import autograd

    n = max(int(getattr(loader, "batch_size", len(ctx_list))) // len(ctx_list), 1)
    size = tuple(getattr(loader, "image_size", ()))
    if len(size) != 2:
        return
    for ctx in ctx_list:
        data = mx.nd.zeros((n, 3) + size, ctx=ctx)
        label = mx.nd.zeros((n,), ctx=ctx)
        with autograd.predict_mode():
            if teacher_cache is not None:
                method(data, label, mx.nd.zeros((n, teacher_cache.emb_size), ctx=ctx))
            else:
                method(data, label)
    mx.nd.waitall()


def params_digest(params):
    """SHA-1 over every trainable parameter (sorted by name): equal digests mean bit-equal weights."""
    import hashlib

    h = hashlib.sha1()
    for name in sorted(params.keys()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(params[name].data(params[name].list_ctx()[0]).asnumpy()).tobytes())
    return h.hexdigest()


def fresh_state(cfg):
    """The run state of a new run: position 0, no checkpoint, the config (``PREFIX-state.json``)."""
    return {"epoch": 0, "batch": 0, "step": 0, "checkpoint": 0, "kept": [], "best": {}, "nonfinite_skipped": 0,
            "seed": int(cfg.seed), "config": dict(cfg)}


def resumed_state(state, saved):
    """``state`` continued from ``saved`` (a ``PREFIX-state.json``): position, checkpoints and
    skip count from the saved run, and its loss curve up to the saved step (points a killed run
    recorded after the saved step are recorded again by the replay, not doubled)."""
    state = dict(state)
    for k in RESUMED_KEYS:
        state[k] = saved[k]
    state["curve"] = [p for p in saved.get("curve", []) if p["step"] <= saved["step"]]
    return state


def next_position(epoch, batch, batches_per_epoch):
    """(epoch, batch) of the batch after ``batch``: the position a checkpoint resumes at."""
    return (epoch, batch + 1) if batch + 1 < batches_per_epoch else (epoch + 1, 0)


def set_classifier_multipliers(params, cfg):
    """InsightFace's ``fc7_wd_mult``/``fc7_lr_mult`` on the classifier (``fc7*``) parameters."""
    for name, p in params.items():
        if name.startswith("fc7"):
            p.wd_mult = float(cfg.fc7_wd_mult)
            p.lr_mult = float(cfg.fc7_lr_mult)


class Fit:
    """One training run of ``method`` over ``loader``; ``run(resume)`` returns the summary.

    Parameters
    ----------
    method : gluon.Block
        ``method(data, label[, teacher_emb]) -> {name: (batch,) NDArray}`` of already-weighted
        loss parts (``methods.base.assembler``); ``method.trainable_params()`` are updated.
    loader
        ``loader.epoch(epoch, start_batch)`` yields batches with ``data``, ``label``, ``index``,
        ``flipped``; ``len(loader)`` batches per epoch.
    cfg : EasyDict
        The run's config (``training.config``).
    job : Job
        Contexts, kvstore, rank and number of workers.
    student : EmbeddingNet, optional
        The block whose parameters form the InsightFace checkpoint (symbol ``student_symbol``);
        every other non-frozen parameter of ``method`` goes to the ``.head.params`` file.
    student_symbol : mx.sym.Symbol, optional
        The ``fc1`` symbol written as ``PREFIX-symbol.json``.
    teacher_cache : TeacherCache, optional
        Teacher embeddings looked up per batch instead of the teacher's forward pass.
    callbacks : sequence of callable
        ``cb(info)`` after each step (``info``: epoch, batch, step, lr, losses, ok, trainer,
        method); may raise ``StopTraining``.
    verify : callable, optional
        ``verify(arg, aux) -> {target: {accuracy, ...}}``, run every ``cfg.verify_every`` batches.
    """

    def __init__(self, method, loader, cfg, job, *, student=None, student_symbol=None, teacher_cache=None,
                 callbacks=(), verify=None):
        self.method, self.loader, self.cfg, self.job = method, loader, cfg, job
        self.student, self.symbol, self.teacher_cache = student, student_symbol, teacher_cache
        self.callbacks, self.verify = tuple(callbacks), verify
        self.ctx_list = job.ctx_list
        self.params = method.trainable_params()
        set_classifier_multipliers(self.params, cfg)
        self.batches_per_epoch = len(loader)
        if self.batches_per_epoch <= 0:
            raise InputError(f"data: fewer images in this shard than one batch ({cfg.batch_size} global)")
        self.global_batch = loader.batch_size * job.num_workers if hasattr(loader, "batch_size") else cfg.batch_size
        self.num_batches = total_batches(cfg, self.batches_per_epoch, self.global_batch)
        # gradients are divided by the global batch: horovod's DistributedTrainer already divides by the
        # number of processes, so (as in horovod's examples) it is given the per-process batch
        self.update_batch = self.global_batch // job.num_workers if job.horovod else self.global_batch
        self.schedule = build_lr_schedule(cfg, self.batches_per_epoch, self.num_batches, self.global_batch)
        self.schedule_record = schedule_record(cfg, self.batches_per_epoch, self.global_batch)
        log.info("%s", describe_schedule(self.schedule_record))
        self.prefix = cfg.out
        self.is_chief = job.rank == 0
        self.ckpt = checkpoint.Checkpointer(self.prefix, cfg.keep_last) if self.prefix else None
        self.verify_every = int(cfg.verify_every or 0)
        self.window = deque(maxlen=max(int(cfg.frequent), 1))  # the last good steps' loss parts
        self.speed_imgs = self.speed_time = 0.0
        self.trainer = self.state = self.guard = self.monitor = None
        self.aux_params = []
        self.saved_at = -1  # the step of the last checkpoint written (or resumed from)

    # -- phases ------------------------------------------------------------------------------
    def run(self, resume=False):
        """All phases in order.

        Parameters
        ----------
        resume : bool
            Continue the run of ``PREFIX-state.json`` instead of starting at batch 0.

        Returns
        -------
        OrderedDict
            ``summary()``: final losses, img/s, best verification, checkpoint, position, digest, curve.
        """
        self.build_trainer()
        self.start(resume)
        self.open_hooks()
        try:
            self.run_epochs()
        except StopTraining:
            log.info("stopped by a callback at step %d", self.state["step"])
        finally:
            self.monitor.close()
        self.final_checkpoint()
        return self.summary()

    def build_trainer(self):
        """``gluon.Trainer`` (SGD, momentum, wd) over the trainable parameters, AMP when ``fp16``;
        every deferred parameter gets its shape and the plain layout before anything reads it."""
        from mxnet import gluon

        cfg, kv = self.cfg, self.job.kvstore
        opts = {"learning_rate": cfg.lr, "momentum": cfg.momentum, "wd": cfg.wd}
        if self.job.horovod:
            # horovod's Trainer: allreduce_grads sums over the processes (it has no kvstore), updates locally
            self.trainer = kv.hvd.DistributedTrainer(self.params, "sgd", opts)
        else:
            self.trainer = gluon.Trainer(self.params, "sgd", opts, kvstore=kv if kv is not None else "device",
                                         # reduce-then-update locally: the guard can then veto a step on every
                                         # worker alike, and Trainer.save_states works under dist_sync too
                                         update_on_kvstore=False)
        if cfg.fp16:
            from mxnet.contrib import amp

            amp.init_trainer(self.trainer)
        _materialize(self.method, self.loader, self.ctx_list, self.teacher_cache)
        _default_layout(self.params)  # before a resume's set_data and before the kvstore first reads the weights

    def start(self, resume):
        """A fresh state, or the saved run's (``resume``); then the kvstore's initial broadcast."""
        self.state = fresh_state(self.cfg)
        self.state["schedule"] = self.schedule_record  # the lr steps as resolved for this run's batch and data
        if resume:
            self.resume()
        # after a resume's set_data/load_states, so that rank 0 broadcasts the restored weights
        sync_initial_params(self.trainer, self.job)
        if self.job.horovod:
            # horovod has no kvstore broadcast: rank 0's weights, in place on each process's one device
            self.job.kvstore.hvd.broadcast_parameters({n: p.data() for n, p in self.params.items()}, root_rank=0)
        self.saved_at = self.state["step"] if resume else -1

    def resume(self):
        """Continue the run of ``PREFIX-state.json``: same config (``run_folder.check_resume_config``),
        parameters and optimizer state from its checkpoint, position and curve from the state."""
        from shrinkteanet.training.run_folder import check_resume_config

        prefix = self.prefix
        if prefix:
            check_resume_visible(prefix, self.job)
        saved = checkpoint.read_state(prefix) if prefix else None
        if saved is None:
            raise InputError(f"--resume: no {prefix}{STATE_SUFFIX} to resume from")
        check_resume_config(prefix + STATE_SUFFIX, saved.get("config"), self.state["config"])
        checkpoint.restore(saved, prefix, self.method, self.trainer)
        self.state = resumed_state(self.state, saved)
        log.info("resumed from %s-%04d at epoch %d batch %d (step %d)", prefix, saved["checkpoint"],
                 saved["epoch"], saved["batch"], saved["step"])

    def open_hooks(self):
        """The NaN guard (its count continues a resumed run's) and the monitor."""
        cfg = self.cfg
        self.guard = NonFiniteGuard(cfg.nan_guard)
        self.guard.skipped = self.state["nonfinite_skipped"]
        # BatchNorm running statistics: not trained, but moved by the forward pass (the guard
        # undoes them); not the other fixed arrays (MarginDistillation's 85k x 512 fc7)
        self.aux_params = [p for name, p in self.method.collect_params().items()
                           if p.grad_req == "null" and name not in self.params and is_running_stat(name)]
        self.monitor = Monitor(self.num_batches, self.state["step"], frequent=cfg.frequent,
                               tensorboard=cfg.get("tensorboard", ""), enabled=self.is_chief)
        if self.ckpt is not None and self.monitor.event_files:
            checkpoint.record_run_files(self.prefix, self.monitor.event_files)

    def run_epochs(self):
        """Epochs from the state's position until ``num_batches`` steps; a checkpoint at each epoch end."""
        state = self.state
        epoch, start = state["epoch"], state["batch"]
        while state["step"] < self.num_batches:
            for b, batch in enumerate(self.loader.epoch(epoch, start), start):
                if state["step"] >= self.num_batches:
                    break
                self.train_batch(epoch, b, batch)
            if state["epoch"] > epoch:
                epoch, start = state["epoch"], 0
                self.save()  # epoch end
            elif state["step"] < self.num_batches:
                raise RuntimeError(f"loader gave {state['batch']} of {self.batches_per_epoch} batches in "
                                   f"epoch {epoch}")

    def train_batch(self, epoch, b, batch):
        """One step at (``epoch``, ``b``) and its after-step hooks."""
        import mxnet as mx

        t0 = time.time()
        s = step_seed(self.cfg.seed, epoch, b)
        mx.random.seed(s)
        np.random.seed(s)
        lr = float(self.schedule(self.state["step"]))
        self.trainer.set_learning_rate(lr)
        ok, values, n = self.update(batch)
        self.advance(epoch, b, ok, values)
        self.observe(lr, values, n, time.time() - t0)
        info = {"epoch": epoch, "batch": b, "step": self.state["step"], "lr": lr, "losses": values, "ok": ok,
                "trainer": self.trainer, "method": self.method}
        for cb in self.callbacks:
            cb(info)
        self.scheduled_checkpoint()

    # -- one step ----------------------------------------------------------------------------
    def update(self, batch):
        """Forward/backward over the contexts, reduce, check, update.  Returns (updated, losses, n).

        The one host sync of a step is the guard's verdict (one fused finiteness flag); the loss
        values (``LossParts``) stay on the device until the monitor reads them."""
        # BatchNorm moves its running statistics in the forward pass: keep them to undo a bad step
        # (device-side copies of the small statistic vectors; nothing waits for them)
        backup = [(p, [a.copy() for a in p.list_data()]) for p in self.aux_params] if self.guard.limit > 0 else []
        losses, part_sums = self._forward(batch)
        autograd_backward(losses)
        self.trainer.allreduce_grads()
        n = int(batch.data.shape[0])
        values = LossParts(part_sums, n)
        ok, overflow = self._verdict(values, backup)
        if ok or overflow:
            # on an AMP overflow Trainer.update only halves the loss scale and skips the update
            self.trainer.update(self.update_batch)
        if not ok:
            for p, saved in backup:
                for dst, src in zip(p.list_data(), saved):
                    src.copyto(dst)
        return ok, values, n

    def _forward(self, batch):
        """Recorded forward pass per context: (loss per context, {part: sum on the first context}).
        Under AMP the losses are scaled inside ``record()`` (outside it the scaled loss is not
        in the graph and backward fails at step 1)."""
        import mxnet as mx
        from mxnet import autograd

        cache, ctx_list = self.teacher_cache, self.ctx_list
        temb = cache.lookup(batch.index, batch.flipped) if cache is not None else None
        datas = _split(batch.data, ctx_list, "float32")
        labels = _split(batch.label, ctx_list, "float32")  # float32 holds class ids exactly up to 2**24
        tembs = _split(temb, ctx_list, "float32")
        losses, part_sums = [], OrderedDict()
        with autograd.record():
            for d, lab, t in zip(datas, labels, tembs):
                parts = self.method(d, lab, t) if t is not None else self.method(d, lab)
                vals = list(parts.values())
                losses.append(mx.nd.add_n(*vals) if len(vals) > 1 else vals[0])
                for k, v in parts.items():
                    part_sums.setdefault(k, []).append(v.sum())
            if self.cfg.fp16:
                losses = amp_scaled(losses, self.trainer)
        first = ctx_list[0]
        sums = OrderedDict((k, mx.nd.add_n(*[x.as_in_context(first) for x in v]) if len(v) > 1 else v[0])
                           for k, v in part_sums.items())
        return losses, sums

    def _verdict(self, values, backup):
        """The guard's verdict on the reduced step: finite losses, gradients and statistics, as
        ``(ok, amp_overflow)``.  One fused flag over all of them; the names of what went
        non-finite are looked up only when it is down."""
        distributed = self.job.distributed
        grads = [p.list_grad()[0] for p in self.params.values() if p.grad_req != "null"]
        # running statistics are per worker: in data-parallel runs only the reduced gradients agree
        stats = [] if distributed else [p.list_data()[0] for p, _ in backup]
        parts = [] if distributed else values.arrays()
        if arrays_all_finite(parts + grads + stats):
            self.guard.good()
            return True, False
        parts_ok, stats_ok = arrays_all_finite(parts), arrays_all_finite(stats)
        if self.cfg.fp16 and parts_ok and stats_ok:
            # finite loss, non-finite gradient: AMP's loss scale overflowed float16
            self.guard.overflow(float(self.trainer._amp_loss_scaler.loss_scale))
            return False, True
        return self.guard.check({} if distributed or parts_ok else values, arrays_all_finite(grads), stats_ok), False

    # -- after-step hooks --------------------------------------------------------------------
    def advance(self, epoch, b, ok, values):
        """Count the step; the position becomes that of the next batch to run."""
        state = self.state
        state["nonfinite_skipped"] = self.guard.skipped
        state["step"] += 1
        state["epoch"], state["batch"] = next_position(epoch, b, self.batches_per_epoch)
        if ok:
            self.window.append(values)

    def observe(self, lr, values, n, seconds):
        """Throughput, the monitor's line and scalars, and every ``frequent`` steps a curve point."""
        imgs = n * self.job.num_workers
        self.speed_imgs += imgs
        self.speed_time += seconds
        self.monitor.step(self.state["step"], lr=lr, parts=values, speed=imgs / max(seconds, 1e-9),
                          skipped=self.guard.skipped)
        if self.state["step"] % self.monitor.frequent == 0:
            record_curve_point(self.state, self.window, lr)

    def scheduled_checkpoint(self):
        """Verification (and a checkpoint) every ``verify_every`` steps, else a checkpoint every ``ckpt_every``."""
        step = self.state["step"]
        if self.verify_every and step % self.verify_every == 0:
            self.verify_and_save()
        elif self.cfg.ckpt_every and step % self.cfg.ckpt_every == 0:
            self.save()

    def final_checkpoint(self):
        """The end of the run: verification and checkpoint (or the checkpoint alone)."""
        if self.verify_every:
            self.verify_and_save()
        else:
            self.save()

    def save(self):
        """A numbered checkpoint of the current step (worker 0, once per step, finite values only:
        ``checkpoint.Checkpointer.save`` decides what it holds)."""
        if self.ckpt is None or not self.is_chief or self.saved_at == self.state["step"]:
            return
        if self.ckpt.save(method=self.method, student=self.student, symbol=self.symbol, trainer=self.trainer,
                          state=self.state):
            self.saved_at = self.state["step"]

    def verify_and_save(self):
        """Verification on the ``.bin`` sets of the current weights, then the checkpoint, then
        the best result (which names that checkpoint)."""
        if self.verify is None or not self.is_chief:
            self.save()
            return
        arg, aux = student_params(self.student, self.symbol)
        results = self.verify(arg, aux)
        self.save()
        if results:
            self.record_verification(results)

    def record_verification(self, results):
        """Log the accuracies; keep the best mean accuracy (and its checkpoint) in the state."""
        state = self.state
        acc = float(np.mean([r["accuracy"] for r in results.values()]))
        log.info("verification at step %d: %s (mean %.5f)", state["step"],
                 " ".join(f"{k}={r['accuracy']:.5f}" for k, r in results.items()), acc)
        self.monitor.scalars("verification", {k: r["accuracy"] for k, r in results.items()}, state["step"])
        if not state["best"] or acc > state["best"]["mean_accuracy"]:
            state["best"] = {"checkpoint": state["checkpoint"] if self.ckpt is not None else None,
                             "step": state["step"], "mean_accuracy": acc, "results": results}
            if self.ckpt is not None:
                checkpoint.write_state(self.prefix, state)

    # -- summary -----------------------------------------------------------------------------
    def summary(self):
        """The run's result: losses (mean over the last ``frequent`` good steps), img/s, best
        verification and its checkpoint, last checkpoint, position, skips, ``params_sha1``, curve."""
        state, window = self.state, self.window
        summary = OrderedDict()
        summary["losses"] = final_losses(window, state)
        summary["img_per_s"] = self.speed_imgs / self.speed_time if self.speed_time > 0 else 0.0
        summary["best_verification"] = state["best"].get("results", {})
        summary["best_checkpoint"] = state["best"].get("checkpoint")
        summary["checkpoint"] = state["checkpoint"] if self.ckpt is not None and self.is_chief else None
        summary["prefix"] = self.prefix or None
        summary["epoch"] = state["epoch"]
        summary["batch"] = state["batch"]
        summary["steps"] = state["step"]
        summary["nonfinite_skipped"] = self.guard.skipped
        summary["rank"] = self.job.rank
        summary["num_workers"] = self.job.num_workers
        summary["params_sha1"] = params_digest(self.method.trainable_params())
        summary["curve"] = state.get("curve", [])
        summary["schedule"] = self.schedule_record
        return summary
