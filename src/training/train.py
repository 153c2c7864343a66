"""The training engine: one Gluon loop for teachers and every student method.

What it does, following InsightFace's MXNet-era ``recognition/train.py`` where
the paper is silent (Sec. 4.1 of ShrinkTeaNet: SGD, momentum 0.9, batch 512 over
4 GPUs, lr 0.1):

* SGD with momentum and weight decay; the classifier (``fc7*``) gets its own
  ``wd_mult``/``lr_mult`` as InsightFace's ``fc7_wd_mult`` does.
* The learning rate is a pure function of the global batch counter, built from
  gluoncv's ``LRSequential``/``LRScheduler`` (linear warm-up, then step decay
  at batch or epoch boundaries, or cosine).  Because the optimizer's own update
  counter is not used, skipped (non-finite) steps and resumes never shift it.
* The global batch is split over workers (dist kvstore: each worker reads its
  own shard of the ``.rec``) and then over the contexts of one worker.
* Gradients are reduced first (``Trainer.allreduce_grads``) and checked for
  non-finite values afterwards, so that every worker sees the same verdict and
  skips the same updates; ``nan_guard`` skips in a row stop the run.
* Checkpoints: ``PREFIX-%04d.params`` + ``PREFIX-symbol.json`` (the embedding
  network only, InsightFace layout, so InsightFace's own scripts read it),
  ``PREFIX-%04d.head.params`` (margin head, adapters: the rest of what is
  trained), ``PREFIX-%04d.states`` (``Trainer.save_states``) and
  ``PREFIX-state.json`` (position, config, kept/best checkpoints).  All atomic.
* Determinism: MXNet's and NumPy's generators are re-seeded from
  ``(seed, epoch, batch)`` before every step and the loader's shuffle is a pure
  function of ``(seed, epoch)``, so a resumed CPU run replays the uninterrupted
  one bit for bit.
"""
import json
import math
import os
import time
from collections import OrderedDict, deque

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import atomic_open, write_json

log = get_logger(__name__)

STATE_SUFFIX = "-state.json"


class NonFiniteLossError(RuntimeError):
    """Raised after ``nan_guard`` consecutive non-finite steps; names the loss term."""

    def __init__(self, message, term):
        super().__init__(message)
        self.term = term


class StopTraining(Exception):
    """A callback may raise this to end the run cleanly (a checkpoint is written)."""


# ---------------------------------------------------------------------------------------------
# seeds, schedules
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def _save_nd_atomic(path, arrays):
    import mxnet as mx

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    mx.nd.save(tmp, arrays)
    _fsync_path(tmp)
    os.replace(tmp, path)


def _fsync_path(path):
    """Flush a file that a library wrote by name to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_embedding_checkpoint(prefix, number, sym, arg_params, aux_params):
    """InsightFace layout (``mx.model.save_checkpoint``), atomically: through
    ``shrinkteanet.model.network.save_checkpoint`` when the networks module provides it."""
    try:
        from shrinkteanet.model.network import save_checkpoint
    except ImportError:
        save_checkpoint = None
    if save_checkpoint is not None:
        save_checkpoint(prefix, number, sym, arg_params, aux_params)
        return
    with atomic_open(f"{prefix}-symbol.json", "w") as f:
        f.write(sym.tojson())
    blob = {f"arg:{k}": v.as_in_context(_cpu()) for k, v in arg_params.items()}
    blob.update({f"aux:{k}": v.as_in_context(_cpu()) for k, v in aux_params.items()})
    _save_nd_atomic("%s-%04d.params" % (prefix, number), blob)


def _cpu():
    import mxnet as mx

    return mx.cpu()


def read_state(prefix):
    """The ``PREFIX-state.json`` of a run, or None."""
    path = prefix + STATE_SUFFIX
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable training state ({e})") from None


class Checkpointer:
    """Writes and prunes numbered checkpoints; keeps the last ``keep_last`` and the best."""

    def __init__(self, prefix, keep_last=3):
        self.prefix = prefix
        self.keep_last = max(int(keep_last), 1)

    def paths(self, number):
        p = self.prefix
        return ["%s-%04d.params" % (p, number), "%s-%04d.head.params" % (p, number), "%s-%04d.states" % (p, number)]

    def save(self, number, sym, arg_params, aux_params, head_params, trainer, state):
        save_embedding_checkpoint(self.prefix, number, sym, arg_params, aux_params)
        _save_nd_atomic("%s-%04d.head.params" % (self.prefix, number),
                        {k: v.as_in_context(_cpu()) for k, v in head_params.items()})
        states = "%s-%04d.states" % (self.prefix, number)
        tmp = os.path.join(os.path.dirname(os.path.abspath(states)), f".{os.path.basename(states)}.tmp")
        trainer.save_states(tmp)
        _fsync_path(tmp)
        os.replace(tmp, states)
        kept = [k for k in state["kept"] if k != number] + [number]
        drop = kept[:-self.keep_last]
        best = state.get("best", {}).get("checkpoint")
        drop = [k for k in drop if k != best]
        state["kept"] = [k for k in kept if k not in drop]
        state["checkpoint"] = number
        # the state moves on first: a crash while pruning leaves files too many, never a state
        # that names a checkpoint already deleted
        write_json(self.prefix + STATE_SUFFIX, state)
        self.prune(state["kept"])
        log.info("checkpoint %s-%04d (epoch %d, batch %d)", self.prefix, number, state["epoch"], state["batch"])

    def prune(self, keep):
        """Delete every checkpoint file of the prefix whose number ``keep`` does not list, and
        temp files: those pruned now and any an earlier crash left (called once the state names
        ``keep``; the run lock guarantees no other writer)."""
        from shrinkteanet.training.run_folder import stray_files

        for path in stray_files(self.prefix, keep):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------------------------
# the guard
# ---------------------------------------------------------------------------------------------
class NonFiniteGuard:
    """Counts non-finite steps; after ``limit`` in a row raises ``NonFiniteLossError``
    naming the first loss term that went non-finite (or ``gradient``)."""

    def __init__(self, limit):
        self.limit = int(limit)
        self.in_a_row = 0
        self.skipped = 0

    def check(self, part_values, grads_finite, stats_finite=True):
        """True for a good step; ``stats_finite``: the BatchNorm running statistics after the
        forward pass (they can overflow while loss and gradients stay finite)."""
        bad = [k for k, v in part_values.items() if not math.isfinite(v)]
        if not bad and grads_finite and stats_finite:
            self.in_a_row = 0
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


def grads_all_finite(params):
    """One fused check over every gradient of the first context (after the reduction)."""
    return arrays_all_finite([p.list_grad()[0] for p in params if p.grad_req != "null"])


def arrays_all_finite(arrays):
    """True when no element of any NDArray is NaN or inf (fused ``multi_all_finite``)."""
    import mxnet as mx

    arrays = [a for a in arrays if a.dtype in (np.float16, np.float32, np.float64)]
    ok = True
    for i in range(0, len(arrays), 128):  # keep the variadic op's input count modest
        chunk = arrays[i:i + 128]
        flag = mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=True)
        ok = ok and bool(flag.asscalar())
    return ok


def nonfinite_names(named_arrays):
    """Names of the arrays holding any NaN or inf (empty when the checkpoint is clean)."""
    if arrays_all_finite(list(named_arrays.values())):
        return []
    return sorted(k for k, v in named_arrays.items() if not arrays_all_finite([v]))


# ---------------------------------------------------------------------------------------------
# observability
# ---------------------------------------------------------------------------------------------
class Monitor:
    """Progress bar (img/s, lr, each loss term), periodic log lines and TensorBoard scalars."""

    def __init__(self, total, initial, frequent=20, tensorboard="", enabled=True):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, disable=not enabled or None,
                        desc="train")
        self.frequent = max(int(frequent), 1)
        self.writer = None
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(tensorboard)
        self.t_last = time.time()
        self.n_last = 0

    def step(self, step, lr, parts, speed, skipped):
        post = OrderedDict(ips=f"{speed:.1f}", lr=f"{lr:.4g}")
        for k, v in parts.items():
            post[k] = f"{v:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        if step % self.frequent == 0:
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


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
class Context:
    """What the loop needs about the job: contexts, kvstore, rank."""

    def __init__(self, ctx_list, kvstore=None):
        self.ctx_list = list(ctx_list)
        self.kvstore = kvstore
        self.rank = getattr(kvstore, "rank", 0) if kvstore is not None else 0
        self.num_workers = getattr(kvstore, "num_workers", 1) if kvstore is not None else 1

    @property
    def distributed(self):
        return self.kvstore is not None and "dist" in getattr(self.kvstore, "type", "")


def make_kvstore(name):
    """``device``/``local`` (one worker), ``dist_sync``/``dist_device_sync``/``dist_async``
    (MXNet's parameter server, started by ``shrinkteanet launch``), or ``horovod``."""
    import mxnet as mx

    if name in ("", "none", None):
        return None
    if name in ("device", "local"):
        return name  # Trainer builds it (only when there is more than one context)
    if name == "horovod":
        try:
            import horovod.mxnet  # noqa: F401
        except ImportError:
            raise InputError("--kvstore horovod: horovod is not installed (HOROVOD_WITH_MXNET=1 pip install "
                             "--no-build-isolation horovod==0.28.1)") from None
        return mx.kv.create("horovod")
    if name.startswith("dist"):
        if "DMLC_ROLE" not in os.environ:
            raise InputError(f"--kvstore {name}: run under `shrinkteanet launch` (DMLC_ROLE is not set)")
        return mx.kv.create(name)
    raise InputError(f"--kvstore {name!r}: expected device, local, dist_sync, dist_device_sync, dist_async or horovod")


def _split(array, ctx_list, dtype=None):
    import mxnet as mx

    if array is None:
        return [None] * len(ctx_list)
    nd = mx.nd.array(array, dtype=dtype or array.dtype)
    if len(ctx_list) == 1:
        return [nd.as_in_context(ctx_list[0])]
    return mx.gluon.utils.split_and_load(nd, ctx_list, even_split=False)


def fit(method, loader, cfg, job, *, student=None, student_symbol=None, teacher_cache=None, resume=False,
        callbacks=(), verify=None):
    """Run the loop.

    ``method(data, label[, teacher_emb]) -> {name: (batch,) NDArray}`` of already-weighted
    loss parts (the losses issue's ``Method``); ``method.trainable_params()`` are updated.
    ``loader.epoch(epoch, start_batch)`` yields batches with ``data``, ``label``, ``index``,
    ``flipped``; ``len(loader)`` batches per epoch.  ``student``: the embedding block whose
    parameters form the InsightFace checkpoint (symbol ``student_symbol``); every other
    non-frozen parameter of ``method`` goes to the ``.head.params`` file.
    ``verify(arg, aux) -> {target: {accuracy, ...}}`` runs every ``cfg.verbose`` batches.
    ``callbacks``: ``cb(info)`` after each step; may raise ``StopTraining``.
    Returns the summary dict (final losses, img/s, best verification, position).
    """
    import mxnet as mx
    from mxnet import autograd, gluon

    ctx_list = job.ctx_list
    params = method.trainable_params()
    for name, p in params.items():
        if name.startswith("fc7"):
            p.wd_mult = float(cfg.fc7_wd_mult)
            p.lr_mult = float(cfg.fc7_lr_mult)
    batches_per_epoch = len(loader)
    if batches_per_epoch <= 0:
        raise InputError(f"data: fewer images in this shard than one batch ({cfg.batch_size} global)")
    num_batches = total_batches(cfg, batches_per_epoch)
    schedule = build_lr_schedule(cfg, batches_per_epoch, num_batches)
    global_batch = loader.batch_size * job.num_workers if hasattr(loader, "batch_size") else cfg.batch_size
    kv = job.kvstore
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": cfg.lr, "momentum": cfg.momentum, "wd": cfg.wd},
                            kvstore=kv if kv is not None else "device",
                            # reduce-then-update locally: the guard can then veto a step on every worker alike,
                            # and Trainer.save_states works under dist_sync too
                            update_on_kvstore=False)
    if cfg.fp16:
        from mxnet.contrib import amp

        amp.init_trainer(trainer)

    _materialize(method, loader, ctx_list, teacher_cache)
    _default_layout(params)  # before a resume's set_data and before the kvstore first reads the weights
    prefix = cfg.out
    is_chief = job.rank == 0
    ckpt = Checkpointer(prefix, cfg.keep_last) if prefix else None
    state = {"epoch": 0, "batch": 0, "step": 0, "checkpoint": 0, "kept": [], "best": {}, "nonfinite_skipped": 0,
             "seed": int(cfg.seed), "config": dict(cfg)}
    if resume:
        prev = read_state(prefix) if prefix else None
        if prev is None:
            raise InputError(f"--resume: no {prefix}{STATE_SUFFIX} to resume from")
        from shrinkteanet.training.run_folder import check_resume_config

        check_resume_config(prefix + STATE_SUFFIX, prev.get("config"), state["config"])
        _restore(prev, prefix, method, student, trainer)
        for k in ("epoch", "batch", "step", "checkpoint", "kept", "best", "nonfinite_skipped"):
            state[k] = prev[k]
        state["curve"] = [p for p in prev.get("curve", []) if p["step"] <= prev["step"]]
        log.info("resumed from %s-%04d at epoch %d batch %d (step %d)", prefix, prev["checkpoint"],
                 prev["epoch"], prev["batch"], prev["step"])
    # after a resume's set_data/load_states, so that rank 0 broadcasts the restored weights
    sync_initial_params(trainer, job)
    saved_at = [state["step"] if resume else -1]

    def save():
        if ckpt is None or not is_chief or saved_at[0] == state["step"]:
            return
        arg, aux, head = _checkpoint_params(method, student, student_symbol)
        if not checkpoint_is_finite(arg, aux, head, state):
            return
        state["checkpoint"] += 1
        ckpt.save(state["checkpoint"], student_symbol, arg, aux, head, trainer, state)
        saved_at[0] = state["step"]

    def verify_and_save():
        if verify is None or not is_chief:
            save()
            return
        arg, aux = _student_params(student, student_symbol)
        results = verify(arg, aux)
        save()
        if not results:
            return
        acc = float(np.mean([r["accuracy"] for r in results.values()]))
        log.info("verification at step %d: %s (mean %.5f)", state["step"],
                 " ".join(f"{k}={r['accuracy']:.5f}" for k, r in results.items()), acc)
        monitor.scalars("verification", {k: r["accuracy"] for k, r in results.items()}, state["step"])
        if not state["best"] or acc > state["best"]["mean_accuracy"]:
            state["best"] = {"checkpoint": state["checkpoint"] if ckpt is not None else None,
                             "step": state["step"], "mean_accuracy": acc, "results": results}
            if ckpt is not None:
                write_json(prefix + STATE_SUFFIX, state)

    guard = NonFiniteGuard(cfg.nan_guard)
    aux_params = [p for name, p in method.collect_params().items() if p.grad_req == "null" and name not in params]
    guard.skipped = state["nonfinite_skipped"]
    monitor = Monitor(num_batches, state["step"], cfg.frequent, cfg.get("tensorboard", ""), enabled=is_chief)
    window = deque(maxlen=max(int(cfg.frequent), 1))
    speed_imgs = speed_time = 0.0
    verbose = int(cfg.verbose or 0)
    try:
        epoch, start = state["epoch"], state["batch"]
        while state["step"] < num_batches:
            for b, batch in enumerate(loader.epoch(epoch, start), start):
                if state["step"] >= num_batches:
                    break
                t0 = time.time()
                s = step_seed(cfg.seed, epoch, b)
                mx.random.seed(s)
                np.random.seed(s)
                lr = float(schedule(state["step"]))
                trainer.set_learning_rate(lr)
                ok, values, n = _step(method, trainer, batch, ctx_list, teacher_cache, cfg.fp16, guard, job,
                                      params, global_batch, aux_params)
                state["nonfinite_skipped"] = guard.skipped
                state["step"] += 1
                # the position is that of the next batch to run
                state["epoch"], state["batch"] = (epoch, b + 1) if b + 1 < batches_per_epoch else (epoch + 1, 0)
                if ok:
                    window.append(values)
                dt = time.time() - t0
                speed_imgs += n * job.num_workers
                speed_time += dt
                monitor.step(state["step"], lr, values, n * job.num_workers / max(dt, 1e-9), guard.skipped)
                if state["step"] % monitor.frequent == 0:
                    record_curve_point(state, window, lr)
                info = {"epoch": epoch, "batch": b, "step": state["step"], "lr": lr, "losses": values, "ok": ok,
                        "trainer": trainer, "method": method}
                for cb in callbacks:
                    cb(info)
                if verbose and state["step"] % verbose == 0:
                    verify_and_save()
                elif cfg.ckpt_every and state["step"] % cfg.ckpt_every == 0:
                    save()
            if state["epoch"] > epoch:
                epoch, start = state["epoch"], 0
                save()  # epoch end
            elif state["step"] < num_batches:
                raise RuntimeError(f"loader gave {state['batch']} of {batches_per_epoch} batches in epoch {epoch}")
    except StopTraining:
        log.info("stopped by a callback at step %d", state["step"])
    finally:
        monitor.close()
    if verbose:
        verify_and_save()
    else:
        save()
    summary = OrderedDict()
    summary["losses"] = OrderedDict(
        (k, float(np.mean([w[k] for w in window]))) for k in (window[-1] if window else {}))
    summary["img_per_s"] = speed_imgs / speed_time if speed_time > 0 else 0.0
    summary["best_verification"] = state["best"].get("results", {})
    summary["best_checkpoint"] = state["best"].get("checkpoint")
    summary["checkpoint"] = state["checkpoint"] if ckpt is not None and is_chief else None
    summary["prefix"] = prefix or None
    summary["epoch"] = state["epoch"]
    summary["batch"] = state["batch"]
    summary["steps"] = state["step"]
    summary["nonfinite_skipped"] = guard.skipped
    summary["rank"] = job.rank
    summary["num_workers"] = job.num_workers
    summary["params_sha1"] = params_digest(method.trainable_params())
    summary["curve"] = state.get("curve", [])
    return summary


def record_curve_point(state, window, lr):
    """Append the loss curve's point at ``state['step']``: the mean of each loss part over the
    last ``frequent`` good steps (the ``window``) and the lr.  Kept in the run state, so a
    resumed run continues the same curve (``summary['curve']``, the study's convergence test)."""
    if not window:
        return
    point = {"step": int(state["step"]), "lr": float(lr)}
    for k in window[-1]:
        point[k] = float(np.mean([w[k] for w in window]))
    state.setdefault("curve", []).append(point)


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


def _step(method, trainer, batch, ctx_list, teacher_cache, fp16, guard, job, params, global_batch, aux_params):
    """Forward/backward over the contexts, reduce, check, update.  Returns (updated, losses, n)."""
    import mxnet as mx
    from mxnet import autograd

    # BatchNorm moves its running statistics in the forward pass: keep them to undo a bad step
    backup = [(p, [a.copy() for a in p.list_data()]) for p in aux_params] if guard.limit > 0 else []
    temb = teacher_cache.lookup(batch.index, batch.flipped) if teacher_cache is not None else None
    datas = _split(batch.data, ctx_list, "float32")
    labels = _split(batch.label, ctx_list, "float32")  # float32 holds class ids exactly up to 2**24
    tembs = _split(temb, ctx_list, "float32")
    losses, part_sums = [], OrderedDict()
    with autograd.record():
        for d, lab, t in zip(datas, labels, tembs):
            parts = method(d, lab, t) if t is not None else method(d, lab)
            vals = list(parts.values())
            losses.append(mx.nd.add_n(*vals) if len(vals) > 1 else vals[0])
            for k, v in parts.items():
                part_sums.setdefault(k, []).append(v.sum())
    if fp16:
        from mxnet.contrib import amp

        with amp.scale_loss(losses, trainer) as scaled:
            autograd.backward(scaled)
    else:
        autograd.backward(losses)
    trainer.allreduce_grads()
    n = int(batch.data.shape[0])
    values = OrderedDict((k, float(sum(x.asscalar() for x in v)) / n) for k, v in part_sums.items())
    # AMP's dynamic loss scaling deals with fp16 gradient overflow itself
    finite = True if fp16 else grads_all_finite(params.values())
    # running statistics are per worker: in data-parallel runs only the reduced gradients agree
    stats_ok = job.distributed or arrays_all_finite([p.list_data()[0] for p, _ in backup])
    ok = guard.check({} if job.distributed else values, finite, stats_ok)
    if ok:
        trainer.update(global_batch)
    else:
        for p, saved in backup:
            for dst, src in zip(p.list_data(), saved):
                src.copyto(dst)
    mx.nd.waitall()
    return ok, values, n


def checkpoint_is_finite(arg, aux, head, state):
    """A checkpoint with any NaN/inf parameter or running statistic is never written (so it
    can neither be counted as good nor push the last clean one out of ``keep_last``)."""
    bad = nonfinite_names({**arg, **{f"aux:{k}": v for k, v in aux.items()}, **head})
    if not bad:
        return True
    last = state["checkpoint"]
    log.warning("step %d: checkpoint not written, non-finite %s%s; the last clean checkpoint is %s",
                state["step"], ", ".join(bad[:3]), " ..." if len(bad) > 3 else "",
                "%04d" % last if last else "none")
    return False


def params_digest(params):
    """SHA-1 over every trainable parameter (sorted by name): equal digests mean bit-equal weights."""
    import hashlib

    h = hashlib.sha1()
    for name in sorted(params.keys()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(params[name].data(params[name].list_ctx()[0]).asnumpy()).tobytes())
    return h.hexdigest()


def _symbol_names(sym):
    return set(sym.list_arguments()), set(sym.list_auxiliary_states())


def _student_params(student, sym):
    if student is None or sym is None:
        return {}, {}
    args, auxs = _symbol_names(sym)
    arg, aux = {}, {}
    for name, p in student.collect_params().items():
        if name in args:
            arg[name] = p.data(p.list_ctx()[0]).copy()
        elif name in auxs:
            aux[name] = p.data(p.list_ctx()[0]).copy()
    return arg, aux


def _checkpoint_params(method, student, sym):
    """(arg, aux, rest): the embedding network's parameters plus the classifier ``fc7*``
    (InsightFace keeps it beside ``fc1`` in training checkpoints; MarginDistillation and KD
    read the teacher's class centres from there), and everything else that is trained
    (adapters H_i) for the ``.head.params`` file."""
    arg, aux = _student_params(student, sym)
    own = set(student.collect_params().keys()) if student is not None else set()
    rest = {}
    for name, p in method.collect_params().items():
        if name in own:
            continue
        value = p.data(p.list_ctx()[0]).copy()
        if name.startswith("fc7"):
            arg[name] = value
        else:
            rest[name] = value
    return arg, aux, rest


def _restore(prev, prefix, method, student, trainer):
    import mxnet as mx

    number = prev["checkpoint"]
    pfile = "%s-%04d.params" % (prefix, number)
    hfile = "%s-%04d.head.params" % (prefix, number)
    sfile = "%s-%04d.states" % (prefix, number)
    for f in (pfile, hfile, sfile):
        if not os.path.exists(f):
            raise InputError(f"--resume: checkpoint file {f} is missing")
    blob = _load_checkpoint_file(pfile)
    if not isinstance(blob, dict):
        raise InputError(f"--resume: {pfile} holds no named parameters")
    flat = {k.split(":", 1)[-1]: v for k, v in blob.items()}
    head = _load_checkpoint_file(hfile)
    flat.update(head if isinstance(head, dict) else {})  # mx.nd.load gives [] for an empty dict
    own = method.collect_params()
    for name, p in own.items():
        if name not in flat:
            raise InputError(f"{pfile}: parameter {name} is missing")
        if tuple(flat[name].shape) != tuple(p.shape):
            raise InputError(f"--resume: {pfile}: parameter {name} is {flat[name].shape}, the network wants {p.shape}")
        p.set_data(flat[name])
    try:
        trainer.load_states(sfile)
    except Exception as e:  # truncated or foreign: pickle, EOF or MXNet errors
        raise InputError(f"--resume: {sfile}: unreadable optimizer state ({_reason(e)})") from None


def _load_checkpoint_file(path):
    """``mx.nd.load`` with a one-line ``InputError`` naming the file (truncated, not MXNet)."""
    import mxnet as mx

    try:
        return mx.nd.load(path)
    except (mx.base.MXNetError, ValueError) as e:
        raise InputError(f"--resume: {path}: unreadable checkpoint file ({_reason(e)})") from None


def _reason(exc):
    from shrinkteanet.core.utils import mxnet_reason

    return mxnet_reason(exc)


# ---------------------------------------------------------------------------------------------
# building a run from a config
# ---------------------------------------------------------------------------------------------
def checkpoint_bytes(method):
    """About the size of one checkpoint: every parameter that is not the frozen teacher's
    (``.params`` + ``.head.params``) plus one momentum array per trainable one (``.states``),
    float32, with 10% for headers and the symbol."""
    teacher = getattr(method, "teacher", None)
    frozen = set(teacher.collect_params().keys()) if teacher is not None else set()
    trainable = set(method.trainable_params().keys())
    total = 0
    for name, p in method.collect_params().items():
        if name in frozen or p.shape is None or any(d <= 0 for d in p.shape):
            continue
        n = int(np.prod(p.shape))
        total += 4 * n * (2 if name in trainable else 1)
    return int(total * 1.1) + 65536


def _build_networks_or_explain(cfg, build_networks, ctx_list):
    """``build_networks`` with an unknown or mismatched network option as one ``InputError``
    naming ``net_opts``/``teacher_net_opts`` (the symbols raise ValueError, MXNet asserts)."""
    try:
        return build_networks(cfg, ctx=ctx_list)
    except InputError:
        raise
    except (ValueError, AssertionError) as e:
        opts = f"network={cfg.network} net_opts={dict(cfg.net_opts)}"
        if cfg.get("teacher"):
            opts += f" / teacher={cfg.teacher} teacher_network={cfg.teacher_network} " \
                    f"teacher_net_opts={dict(cfg.teacher_net_opts)}"
        raise InputError(f"config {opts}: {_reason(e) if str(e) else type(e).__name__}") from None


def initialize_params(params, ctx_list):
    """InsightFace's initialiser for everything not loaded: Xavier (gaussian, 'out', 2) for
    weights; each parameter's own ``init`` (zeros/ones for BN, the head's normal) wins."""
    import mxnet as mx

    fresh = [p for p in params.values() if p._data is None and not p._deferred_init]
    init = mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    for p in fresh:
        p.initialize(init=None if p.init is not None else init, default_init=init, ctx=ctx_list)
    for p in params.values():
        if p._data is not None and p.list_ctx() != list(ctx_list):
            p.reset_ctx(ctx_list)


def make_verifier(cfg, image_size, ctx):
    """``verify(arg, aux) -> {target: fields}`` over the ``.bin`` targets found in ``val_dir``
    (default: the data folder), through the evaluation code; None when there are none."""
    root = cfg.val_dir or cfg.data_dir
    targets = [t for t in cfg.val_targets if os.path.isfile(os.path.join(root, f"{t}.bin"))]
    missing = [t for t in cfg.val_targets if t not in targets]
    if missing:
        log.warning("verification: %s not found in %s; skipped", ", ".join(missing), root)
    if not targets:
        return None
    from shrinkteanet.data.binfile import load_bin
    from shrinkteanet.eval.embed import Embedder
    from shrinkteanet.eval.verification import evaluate_full, xnorm_of

    sets = {t: load_bin(os.path.join(root, f"{t}.bin"), image_size=(image_size, image_size)) for t in targets}

    def verify(sym, arg, aux):
        emb = Embedder((sym, arg, aux), ctx=ctx, batch_size=min(64, max(len(v[0]) for v in sets.values())),
                       image_size=image_size)
        out = OrderedDict()
        for t, (images, issame) in sets.items():
            e, ef = emb.embed_parts(images)
            out[t] = evaluate_full(e + ef, issame, xnorm=xnorm_of((e, ef)))[0]
        return out

    return verify


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


def check_hyperparameters(cfg):
    """``InputError`` naming the key for a NaN/inf or out-of-range optimiser or network number
    (MXNet would fail deep inside, or, for ``lr=-1`` and ``momentum=5``, train on silently)."""
    for key, (ok, what) in _HYPERPARAMETER_RULES.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise InputError(f"config {key}={value!r}: must be {what}")


def _num_classes_chosen(cfg):
    """Whether ``num_classes`` was chosen for this data: set by the user, or the dataset row's
    own count while training on that row's own folder.  A preset's count (85742 for emore)
    carried over to another ``data_dir`` was not, and the data's count replaces it silently."""
    from shrinkteanet.training import config

    name = cfg.get("config_name")
    if name not in config.CONFIGS:
        return True
    row = config.DATASETS.get(cfg.get("dataset"), {})
    preset = row.get("num_classes", config.DEFAULT.get("num_classes"))
    if int(cfg.num_classes) != int(preset or 0):
        return True  # an override
    return os.path.normpath(str(cfg.data_dir)) == os.path.normpath(str(row.get("data_dir", "")))


def train(cfg, ctx_list=None, resume=False, callbacks=(), loader=None, overwrite=False):
    """Train ``cfg`` (a ``shrinkteanet.training.config`` EasyDict) and return the summary.

    The output folder is locked for the run (``shrinkteanet.training.run_folder``); a new run over an
    existing one is refused unless ``overwrite`` (which removes the old run's files).

    Builds the kvstore (rank, workers), the loader over this worker's shard, the
    student (and the teacher from ``cfg.teacher``), the method of ``cfg.distill``
    (``shrinkteanet.methods.distill.build_method``), the teacher cache when
    ``cfg.teacher_cache`` is set, and the verifier; then runs ``fit``."""
    import mxnet as mx

    ctx_list = list(ctx_list or [mx.cpu()])
    if not cfg.data_dir:
        raise InputError("config data_dir is empty: --data DIR")
    check_hyperparameters(cfg)
    kv = make_kvstore(cfg.kvstore)
    job = Context(ctx_list, None if isinstance(kv, str) else kv)
    job.kvstore = kv
    if job.num_workers > 1 and cfg.out and job.rank > 0:
        log.info("worker %d of %d: checkpoints are written by worker 0", job.rank, job.num_workers)
    if cfg.batch_size % (job.num_workers * len(ctx_list)):
        raise InputError(f"config batch_size={cfg.batch_size} is not divisible by {job.num_workers} worker(s) x "
                         f"{len(ctx_list)} context(s)")
    lock = claim_output(cfg.out, job.rank, resume, overwrite)
    try:
        return _train_locked(cfg, ctx_list, job, resume, callbacks, loader)
    finally:
        if lock is not None:
            lock.release()


def claim_output(prefix, rank, resume, overwrite):
    """Lock the folder of ``prefix`` (worker 0 only: it alone writes) and refuse a new run over
    an old one unless ``overwrite``.  Returns the held ``RunLock`` or None."""
    if not prefix or rank != 0:
        return None
    from shrinkteanet.training.run_folder import RunLock, prepare_fresh_run

    lock = RunLock(os.path.dirname(os.path.abspath(prefix))).acquire()
    try:
        if not resume:
            prepare_fresh_run(prefix, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def _train_locked(cfg, ctx_list, job, resume, callbacks, loader):
    """``train`` once the output folder is held."""
    from shrinkteanet.data.loader import FaceLoader
    from shrinkteanet.methods.distill import build_method, build_networks, loader_lowres_size, needs_teacher_embedding

    if loader is None:
        loader = FaceLoader(cfg.data_dir, cfg.batch_size // job.num_workers, seed=cfg.seed, workers=cfg.workers,
                            mirror=cfg.mirror, color_jitter=cfg.color_jitter,
                            lowres_size=loader_lowres_size(cfg),
                            part_index=job.rank, num_parts=job.num_workers)
    image_size = int(loader.image_size[0])
    if image_size != int(cfg.image_size):
        log.info("data are %dx%d; config image_size=%d follows the data", image_size, image_size, cfg.image_size)
        cfg.image_size = image_size
    num_classes = int(loader.num_classes)
    if cfg.num_classes and int(cfg.num_classes) != num_classes and _num_classes_chosen(cfg):
        log.warning("config num_classes=%d but %s has %d; using the data's", cfg.num_classes, cfg.data_dir,
                    num_classes)
    cfg.num_classes = num_classes

    seed_everything(cfg.seed)
    if cfg.fp16:
        if ctx_list[0].device_type != "gpu":
            raise InputError("--fp16 needs GPUs (--gpus): MXNet's AMP runs float16 kernels on CUDA only")
        from mxnet.contrib import amp

        amp.init()
    student, teacher, teacher_fc7 = _build_networks_or_explain(cfg, build_networks, ctx_list)
    method = build_method(cfg, student, teacher, num_classes=num_classes, teacher_fc7=teacher_fc7, ctx=ctx_list)
    initialize_params(method.collect_params(), ctx_list)
    if cfg.get("hybridize", True):
        method.hybridize(static_alloc=True, static_shape=True)
    cache = None
    if cfg.teacher_cache:
        from shrinkteanet.training.teacher_cache import TeacherCache

        if not needs_teacher_embedding(cfg):
            raise InputError(f"--teacher-cache: distill={cfg.distill} uses no teacher embedding each step")
        if cfg.color_jitter > 0:
            raise InputError("--teacher-cache holds embeddings of un-jittered images: set color_jitter=0")
        cache = TeacherCache(cfg.teacher_cache)
        cache.check_covers(loader.keys)
    if cfg.out and job.rank == 0:
        from shrinkteanet.training.run_folder import check_free_space

        check_free_space(os.path.dirname(os.path.abspath(cfg.out)), checkpoint_bytes(method))
    verify = make_verifier(cfg, image_size, ctx_list[0]) if cfg.verbose and job.rank == 0 else None
    sym = student.embedding_symbol
    try:
        summary = fit(method, loader, cfg, job, student=student, student_symbol=sym, teacher_cache=cache,
                      resume=resume, callbacks=callbacks,
                      verify=(lambda arg, aux: verify(sym, arg, aux)) if verify else None)
        if job.rank == 0:
            summary["stage_cosines"] = final_stage_cosines(method, loader, ctx_list[0])
        return summary
    finally:
        if hasattr(loader, "close"):
            loader.close()


def final_stage_cosines(method, loader, ctx):
    """``distill.stage_cosines`` on the first batch of epoch 0 (keys are stage numbers as strings)."""
    import mxnet as mx

    from shrinkteanet.methods.distill import stage_cosines

    if not hasattr(loader, "epoch"):
        return {}
    batch = next(iter(loader.epoch(0)), None)
    if batch is None:
        return {}
    data = mx.nd.array(batch.data, ctx=ctx)
    return {str(k): v for k, v in stage_cosines(method, data).items()}
