"""Training a config: the kvstore, the loader, the networks and method, then ``fit.Fit``'s loop.

What it does, following InsightFace's MXNet-era ``recognition/train.py`` where
the paper is silent (Sec. 4.1 of ShrinkTeaNet: SGD, momentum 0.9, batch 512 over
4 GPUs, lr 0.1):

* ``train(cfg)`` checks the numbers of the config, builds the kvstore (rank, workers),
  locks the output folder (``run_folder``), builds the loader over this worker's shard
  (the global batch is split over workers, then over the contexts of one worker), the
  student and teacher, the method of ``cfg.distill``, the teacher cache and the
  verifier, and runs ``fit.Fit`` (the loop in named phases: SGD with the classifier's
  own ``fc7_wd_mult``/``fc7_lr_mult``, the lr a pure function of the global batch
  counter (``schedule``), reduce-then-check NaN guard, checkpoints, resume).
* Checkpoints (``shrinkteanet.model.checkpoint``): ``PREFIX-%04d.params`` +
  ``PREFIX-symbol.json`` (the embedding network only, InsightFace layout, so
  InsightFace's own scripts read it), ``PREFIX-%04d.head.params`` (margin head,
  adapters: the rest of what is trained), ``PREFIX-%04d.states``
  (``Trainer.save_states``) and ``PREFIX-state.json`` (position, config, kept/best
  checkpoints).  All atomic.
* Determinism: MXNet's and NumPy's generators are re-seeded from
  ``(seed, epoch, batch)`` before every step and the loader's shuffle is a pure
  function of ``(seed, epoch)``, so a resumed CPU run replays the uninterrupted
  one bit for bit.
"""
import os
from collections import OrderedDict

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import mxnet_reason
from shrinkteanet.training.fit import Fit, Horovod, Job
from shrinkteanet.training.schedule import seed_everything
from shrinkteanet.training.validate import check_kvstore_name, validate

log = get_logger(__name__)


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------
def check_kvstore(name):
    """A ``--kvstore`` this package runs, refused in one line otherwise, before anything is read:
    an unknown or refused name (``validate.check_kvstore_name``: ``dist_async``), ``horovod``
    without ``horovod.mxnet``."""
    check_kvstore_name({"kvstore": name})
    if name == "horovod":
        try:
            import horovod.mxnet  # noqa: F401
        except ImportError:
            raise InputError("--kvstore horovod: horovod.mxnet is not importable (HOROVOD_WITH_MXNET=1 pip install "
                             "--no-build-isolation horovod==0.28.1), or use `shrinkteanet launch` with "
                             "dist_device_sync") from None


def make_kvstore(name):
    """``device``/``local`` (one worker), ``dist_sync``/``dist_device_sync`` (MXNet's parameter
    server, started by ``shrinkteanet launch``; ``dist_device_sync`` sums on the GPUs), or
    ``horovod`` (a ``Horovod`` job; one process per GPU, started by ``horovodrun``)."""
    import mxnet as mx

    check_kvstore(name)
    if name in ("", "none", None):
        return None
    if name in ("device", "local"):
        return name  # Trainer builds it (only when there is more than one context)
    if name == "horovod":
        import horovod.mxnet as hvd

        return Horovod(hvd)
    if "DMLC_ROLE" not in os.environ:
        raise InputError(f"--kvstore {name}: run under `shrinkteanet launch` (DMLC_ROLE is not set)")
    return mx.kv.create(name)


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


def _build_networks_or_explain(cfg, build_networks, ctx_list, cached_emb_size=0):
    """``build_networks`` with an unknown or mismatched network option as one ``InputError``
    naming ``net_opts``/``teacher_net_opts`` (the symbols raise ValueError, MXNet asserts)."""
    try:
        return build_networks(cfg, ctx=ctx_list, cached_emb_size=cached_emb_size)
    except InputError:
        raise
    except (ValueError, AssertionError) as e:
        opts = f"network={cfg.network} net_opts={dict(cfg.net_opts)}"
        if cfg.get("teacher"):
            opts += f" / teacher={cfg.teacher} teacher_network={cfg.teacher_network} " \
                    f"teacher_net_opts={dict(cfg.teacher_net_opts)}"
        raise InputError(f"config {opts}: {mxnet_reason(e) if str(e) else type(e).__name__}") from None


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


class Verifier:
    """``verifier(arg, aux) -> {target: fields}``: InsightFace's verification (flip-fused
    embeddings, 10 folds; ``eval.verification.evaluate_full``) of the weights ``arg``/``aux``
    of ``symbol`` on the ``.bin`` sets ``sets`` (``{target: (images, issame)}``)."""

    def __init__(self, symbol, sets, image_size, ctx):
        import mxnet as mx

        # without AMP's casts (``tojson`` drops them): the float32 graph of the checkpoint, whose
        # PReLUs and float32 parameters then agree under --fp16 too
        symbol = mx.sym.load_json(symbol.tojson())
        self.symbol, self.sets, self.image_size, self.ctx = symbol, sets, int(image_size), ctx

    def __call__(self, arg, aux):
        from shrinkteanet.eval.embed import Embedder
        from shrinkteanet.eval.verification import evaluate_full, xnorm_of

        emb = Embedder((self.symbol, arg, aux), ctx=self.ctx,
                       batch_size=min(64, max(len(v[0]) for v in self.sets.values())), image_size=self.image_size,
                       name="the student being trained (verification)")
        out = OrderedDict()
        for t, (images, issame) in self.sets.items():
            e, ef = emb.embed_parts(images)
            out[t] = evaluate_full(e + ef, issame, xnorm=xnorm_of((e, ef)))[0]
        return out


def make_verifier(cfg, image_size, ctx, symbol):
    """A ``Verifier`` of ``symbol`` over the ``.bin`` targets found in ``val_dir`` (default:
    the data folder); None when there are none."""
    root = cfg.val_dir or cfg.data_dir
    targets = [t for t in cfg.val_targets if os.path.isfile(os.path.join(root, f"{t}.bin"))]
    missing = [t for t in cfg.val_targets if t not in targets]
    if missing:
        log.warning("verification: %s: no %s; skipped", os.path.join(root, ""), ", ".join(f"{t}.bin" for t in missing))
    if not targets:
        return None
    from shrinkteanet.data.binfile import load_bin

    sets = {t: load_bin(os.path.join(root, f"{t}.bin"), image_size=(image_size, image_size)) for t in targets}
    return Verifier(symbol, sets, image_size, ctx)


def _image_size_chosen(cfg):
    """Whether ``image_size`` was set by the user: it differs from the preset's (the dataset
    row's, else ``DEFAULT``).  A preset's 112 follows the data; a chosen size the data do not
    have is refused (issue 21: it was overridden with an INFO line)."""
    from shrinkteanet.training import config

    row = config.DATASETS.get(cfg.get("dataset"), {})
    return int(cfg.image_size) != int(row.get("image_size", config.DEFAULT.get("image_size")))


def _num_classes_chosen(cfg):
    """Whether ``num_classes`` was chosen for this data: set by the user, or the dataset row's
    own count while training on that row's own folder.  A preset's count (85742 for emore)
    carried over to another ``data_dir`` was not, and the data's count replaces it silently."""
    from shrinkteanet.training import config

    name = cfg.get("config_name")
    if name not in config.named_configs():
        return True
    row = config.DATASETS.get(cfg.get("dataset"), {})
    preset = row.get("num_classes", config.DEFAULT.get("num_classes"))
    if int(cfg.num_classes) != int(preset or 0):
        return True  # an override
    return os.path.normpath(str(cfg.data_dir)) == os.path.normpath(str(row.get("data_dir", "")))


def train(cfg, ctx_list=None, *, resume=False, callbacks=(), loader=None, overwrite=False, log_file=False,
          report=None):
    """Train ``cfg`` (a ``shrinkteanet.training.config`` EasyDict) and return the summary.

    The outputs are checked first (``run_folder.check_run_outputs``: writable, free space, name
    lengths, never the teacher's checkpoint).  The output folder is locked for the run
    (``run_folder.RunClaim``); a new run over an existing one is refused unless ``overwrite``
    (which removes exactly the old run's files, as its manifest lists them); a run that fails
    before its first checkpoint leaves nothing behind.

    Builds the kvstore (rank, workers), the loader over this worker's shard, the
    student (and the teacher from ``cfg.teacher``), the method of ``cfg.distill``
    (``shrinkteanet.methods.base.assembler.build_method``), the teacher cache when
    ``cfg.teacher_cache`` is set, and the verifier; then runs ``fit.Fit``.

    Parameters
    ----------
    cfg : EasyDict
        The run's config.
    ctx_list : list of mx.Context, optional
        This worker's devices (default: the CPU).
    resume : bool
        Continue the run in ``cfg.out`` (``PREFIX-state.json``).
    callbacks : sequence of callable
        ``cb(info)`` after each step (``fit.Fit.train_batch``).
    loader : optional
        A loader to use instead of ``FaceLoader`` over ``cfg.data_dir``.
    overwrite : bool
        Replace an old run in ``cfg.out``.
    log_file : bool
        Also log to ``PREFIX-train.log`` (``PREFIX-train-rankN.log`` on worker N), from the start
        of this call (records wait in memory until the folder is claimed).
    report : str, optional
        The ``--json`` file the caller writes the summary to: checked now, and listed in the
        run's manifest when it lies in the run folder.

    Returns
    -------
    OrderedDict
        ``fit.Fit.summary`` plus ``stage_cosines`` on worker 0.
    """
    import mxnet as mx

    from shrinkteanet.core.logutil import LogFile
    from shrinkteanet.training.run_folder import check_run_outputs

    ctx_list = list(ctx_list or [mx.cpu()])
    check_kvstore(cfg.kvstore)  # a store that cannot run is refused before anything is checked or read
    if not cfg.data_dir:
        raise InputError("config data_dir is empty: --data DIR")
    log_to = LogFile() if log_file and cfg.out else None
    try:
        check_run_outputs(cfg, report)
        validate(cfg)  # every check of `shrinkteanet config`, before any data is read
        job = make_job(cfg, ctx_list)
        with claim_output(cfg, job.rank, resume=resume, overwrite=overwrite, report=report, log=log_to):
            return _train_locked(cfg, job, resume=resume, callbacks=callbacks, loader=loader)
    finally:
        if log_to is not None:
            log_to.close()


def make_job(cfg, ctx_list):
    """The ``Job`` of this worker (kvstore ``cfg.kvstore``); the global batch must split
    evenly over workers and contexts."""
    kv = make_kvstore(cfg.kvstore)
    job = Job(horovod_contexts(kv, ctx_list), None if isinstance(kv, str) else kv)
    job.kvstore = kv
    if job.num_workers > 1 and cfg.out and job.rank > 0:
        log.info("worker %d of %d: checkpoints are written by worker 0", job.rank, job.num_workers)
    if cfg.batch_size % (job.num_workers * len(job.ctx_list)):
        raise InputError(f"config batch_size={cfg.batch_size} is not divisible by {job.num_workers} worker(s) x "
                         f"{len(job.ctx_list)} context(s) (--gpus picks the devices; without it every visible GPU)")
    return job


def horovod_contexts(kv, ctx_list):
    """One GPU per horovod process, ``gpu(local_rank)`` (horovod's rule); the CPU stays the CPU."""
    import mxnet as mx

    if not isinstance(kv, Horovod) or ctx_list[0].device_type != "gpu":
        return ctx_list
    log.info("horovod worker %d of %d: gpu(%d) (local rank)", kv.rank, kv.num_workers, kv.local_rank)
    return [mx.gpu(kv.local_rank)]


def claim_output(cfg, rank, *, resume, overwrite, report=None, log=None):
    """The ``run_folder.RunClaim`` of ``cfg.out`` (a do-nothing context without ``out``): worker 0
    locks the folder and refuses a new run over an old one unless ``overwrite``; never removes
    the teacher's checkpoint files."""
    import contextlib

    from shrinkteanet.training.run_folder import RunClaim, run_inputs

    if not cfg.out:
        return contextlib.nullcontext()
    return RunClaim(cfg.out, rank=rank, resume=resume, overwrite=overwrite, report=report, log=log,
                    keep=[i.path for i in run_inputs(cfg)])


def _train_locked(cfg, job, *, resume, callbacks, loader):
    """``train`` once the output folder is held."""
    ctx_list = job.ctx_list
    loader = loader if loader is not None else make_loader(cfg, job)
    follow_data(cfg, loader)
    cache = open_teacher_cache(cfg, loader)
    student, method = build_student_method(cfg, ctx_list, cache)
    check_cache_teacher(cfg, cache)
    if cfg.out and job.rank == 0:
        from shrinkteanet.training.run_folder import check_free_space

        check_free_space(os.path.dirname(os.path.abspath(cfg.out)), checkpoint_bytes(method))
    sym = student.embedding_symbol
    verify = make_verifier(cfg, cfg.image_size, ctx_list[0], sym) if cfg.verify_every and job.rank == 0 else None
    try:
        summary = Fit(method, loader, cfg, job, student=student, student_symbol=sym, teacher_cache=cache,
                      callbacks=callbacks, verify=verify).run(resume=resume)
        if job.rank == 0:
            summary["stage_cosines"] = final_stage_cosines(method, loader, ctx_list[0], len(ctx_list), cache)
        return summary
    finally:
        if hasattr(loader, "close"):
            loader.close()


def make_loader(cfg, job):
    """``FaceLoader`` over this worker's shard of ``cfg.data_dir`` (its part of the global batch)."""
    from shrinkteanet.data.loader import FaceLoader
    from shrinkteanet.methods.base.registry import loader_lowres_size

    return FaceLoader(cfg.data_dir, cfg.batch_size // job.num_workers, seed=cfg.seed, workers=cfg.workers,
                      mirror=cfg.mirror, color_jitter=cfg.color_jitter, lowres_size=loader_lowres_size(cfg),
                      part_index=job.rank, num_parts=job.num_workers)


def follow_data(cfg, loader):
    """``cfg.image_size`` and ``cfg.num_classes`` become the data's (a warning when the user's
    own ``num_classes`` differs)."""
    image_size = int(loader.image_size[0])
    if image_size != int(cfg.image_size):
        if _image_size_chosen(cfg):
            raise InputError(f"config image_size={cfg.image_size}, but {cfg.data_dir} holds {image_size}x{image_size} "
                             f"faces; leave image_size out (the data's size is used) or train on "
                             f"{cfg.image_size}x{cfg.image_size} faces")
        log.info("data are %dx%d; config image_size=%d follows the data", image_size, image_size, cfg.image_size)
        cfg.image_size = image_size
    num_classes = int(loader.num_classes)
    if cfg.num_classes and int(cfg.num_classes) != num_classes and _num_classes_chosen(cfg):
        log.warning("config num_classes=%d but %s has %d; using the data's", cfg.num_classes, cfg.data_dir,
                    num_classes)
    cfg.num_classes = num_classes


def build_student_method(cfg, ctx_list, cache=None):
    """Seeded, initialised and hybridized ``(student, method)`` of ``cfg`` (AMP set up first
    when ``fp16``); with the teacher ``cache`` and no ``teacher`` checkpoint, a method that reads
    only the teacher's embedding is built without loading a teacher (``networks.build_networks``)."""
    from shrinkteanet.methods.base.assembler import build_method
    from shrinkteanet.training.networks import build_networks

    seed_everything(cfg.seed)
    if cfg.fp16:
        if ctx_list[0].device_type != "gpu":
            raise InputError("--fp16 needs GPUs (--gpus): MXNet's AMP runs float16 kernels on CUDA only")
        from mxnet.contrib import amp

        amp.init()
    student, teacher, teacher_fc7 = _build_networks_or_explain(
        cfg, build_networks, ctx_list, cached_emb_size=cache.emb_size if cache is not None else 0)
    method = build_method(cfg, student, teacher, num_classes=cfg.num_classes, teacher_fc7=teacher_fc7,
                          ctx=ctx_list)
    initialize_params(method.collect_params(), ctx_list)
    if cfg.get("hybridize", True):
        method.hybridize(static_alloc=True, static_shape=True)
    return student, method


def open_teacher_cache(cfg, loader):
    """The ``TeacherCache`` of ``cfg.teacher_cache`` checked against the method and the data (by
    content, ``TeacherCache.check_data``), or None; its teacher is checked once built
    (``check_cache_teacher``)."""
    if not cfg.teacher_cache:
        return None
    from shrinkteanet.methods.base.registry import needs_teacher_embedding
    from shrinkteanet.training.teacher_cache import TeacherCache

    if not needs_teacher_embedding(cfg):
        raise InputError(f"--teacher-cache: distill={cfg.distill} uses no teacher embedding each step")
    if cfg.color_jitter > 0:
        raise InputError("--teacher-cache holds embeddings of un-jittered images: set color_jitter=0")
    cache = TeacherCache(cfg.teacher_cache)
    cache.check_data(cfg.data_dir)
    cache.check_covers(loader.keys)
    return cache


def check_cache_teacher(cfg, cache):
    """With a ``teacher`` checkpoint, the cache must be its own (``TeacherCache.check_teacher``:
    width, then content); checked once the teacher is built (``cfg.teacher_emb_size`` is its
    width), before the first step.  A cache-only run takes its teacher's width from the cache."""
    if cache is None or not cfg.teacher:
        return
    from shrinkteanet.core.utils import parse_model_arg

    cache.check_teacher(parse_model_arg(cfg.teacher), cfg.get("teacher_emb_size") or cfg.emb_size)


def final_stage_cosines(method, loader, ctx, num_ctx=1, cache=None):
    """``assembler.stage_cosines`` on one device's share of the first batch of epoch 0 (keys are
    stage numbers as strings): the batch shape the training graphs were built for on ``ctx``,
    so no new graph for the whole batch is built there after training.  With a teacher
    ``cache`` the teacher's embeddings are the cache's, as in training (a cache-only run has
    no teacher to run).  A failure (out of
    memory) is logged and gives ``{}``: the run's summary is never lost to this check."""
    import mxnet as mx

    from shrinkteanet.methods.base.assembler import stage_cosines

    if not hasattr(loader, "epoch"):
        return {}
    try:
        batch = next(iter(loader.epoch(0)), None)
        if batch is None:
            return {}
        share = max(len(batch.data) // max(int(num_ctx), 1), 1)
        data = mx.nd.array(batch.data[:share], ctx=ctx)
        temb = None if cache is None else mx.nd.array(cache.lookup(batch.index[:share], batch.flipped[:share]), ctx=ctx)
        return {str(k): v for k, v in stage_cosines(method, data, temb).items()}
    except Exception as e:  # noqa: BLE001 -- a diagnostic after training; the summary must survive
        log.warning("final stage-cosine check failed (%s: %s); summary without stage_cosines",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return {}
