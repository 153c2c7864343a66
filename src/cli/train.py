"""`shrinkteanet train --config NAME [key=value ...]`: train a teacher or a student.

The config (and its overrides) is parsed before mxnet is imported, so a bad key
fails at once with one line.  Under `shrinkteanet launch` every node runs this
same command; importing mxnet turns the server and scheduler nodes into
parameter-server processes (they never return from the import).
"""
import argparse
import os
import sys

from shrinkteanet.cli import GPUS_HELP, add_json_arg

ORDER = 40


class _Intermixed(argparse.ArgumentParser):
    """Lets ``key=value`` overrides and ``--flags`` come in any order
    (``parse_known_intermixed_args``; the guard stops its inner calls from recursing)."""

    _busy = False

    def parse_known_args(self, args=None, namespace=None):
        if self._busy:
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def register(sub):
    p = sub.add_parser("train", help="train a teacher or a student (plain, L2, ShrinkTeaNet, KD, MarginDistillation, "
                                     "low-res KT/KD)",
                       description="Train with a named config (shrinkteanet.training.config.named_configs(), e.g. teacher_r90, "
                                   "mfnr_self, mfnr_l2, mfnr_stn) and key=value overrides of its keys.")
    p.add_argument("--config", required=True, help="named config, e.g. mfnr_stn")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--data", default=None, metavar="DIR", help="training set folder (sets data_dir)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="checkpoint folder; checkpoints are DIR/model-%%04d.params (sets out=DIR/model)")
    p.add_argument("--gpus", default=None, help=f"e.g. 0,1,2,3 ({GPUS_HELP})")
    p.add_argument("--teacher", default=None, metavar="P,E", help="teacher checkpoint PREFIX,EPOCH")
    p.add_argument("--teacher-cache", default=None, metavar="CACHE",
                   help="teacher embeddings from `shrinkteanet cache-teacher` instead of the teacher's forward pass")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint (position, optimizer)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUT that holds an old one: the files its manifest "
                        "(OUT/model-manifest.json) lists are removed, nothing else")
    p.add_argument("--fp16", action="store_true", help="mixed precision on GPUs (mx.contrib.amp)")
    p.add_argument("--kvstore", default=None,
                   help="device (default), dist_sync (CPU workers) or dist_device_sync (GPU workers) under "
                        "`shrinkteanet launch`, horovod (under horovodrun, one GPU per process); dist_async is "
                        "refused")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help="write TensorBoard scalars to DIR")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (sets num_epochs)")
    add_json_arg(p)
    p.set_defaults(func=run, outputs=outputs)
    p.__class__ = _Intermixed


def build_config(args):
    """The EasyDict config of the command line (no mxnet import)."""
    from shrinkteanet.training import config
    from shrinkteanet.core.errors import InputError

    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    cfg = config.config_by_name(args.config, args.overrides)
    if args.data is not None:
        cfg.data_dir = args.data
    if args.out is not None:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise InputError(f"--out {args.out}: exists and is not a directory")
        cfg.out = os.path.join(args.out, "model")
    for flag, key in (("teacher", "teacher"), ("teacher_cache", "teacher_cache"), ("kvstore", "kvstore"),
                      ("tensorboard", "tensorboard"), ("max_batches", "max_batches"), ("epochs", "num_epochs")):
        value = getattr(args, flag)
        if value is not None:
            cfg[key] = value
    if args.fp16:
        cfg.fp16 = True
    return cfg


def outputs(args):
    """What the run writes and reads (``core.outputs``, checked by ``cli.main`` before anything
    else): ``--out``, ``--json``, ``--tensorboard``; the ``--teacher`` checkpoint."""
    from shrinkteanet.training.run_folder import run_inputs, run_outputs

    if os.environ.get("DMLC_ROLE", "worker") != "worker":
        return [], []  # a dist server or scheduler writes nothing
    cfg = build_config(args)
    return run_outputs(cfg, args.json), run_inputs(cfg)


def run(args):
    cfg = build_config(args)  # InputError -> one line, exit 2, before anything heavy
    role = os.environ.get("DMLC_ROLE", "")
    import mxnet  # noqa: F401 - on a dist server/scheduler node this import serves and exits

    from shrinkteanet.core.utils import get_contexts, write_json
    from shrinkteanet.training.fit import NonFiniteLossError

    ctx = get_contexts(args.gpus)
    try:
        from shrinkteanet.training import train

        # the log (PREFIX-train.log) is opened once the run holds its folder: nothing is written
        # to a folder another run holds, and a run that fails first leaves no log-only folder
        summary = train.train(cfg, ctx, resume=args.resume, overwrite=args.overwrite, log_file=True,
                              report=args.json)
    except NonFiniteLossError as e:
        print(f"shrinkteanet: error: {e}", file=sys.stderr)
        return _leave(role, 3)
    except BaseException as e:
        if role == "worker":
            # a dist_sync worker that returns normally blocks in ps-lite's shutdown barrier
            # waiting for its peers; leave at once so that `shrinkteanet launch` sees the failure
            from shrinkteanet.core.errors import InputError

            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"shrinkteanet: error: {msg}", file=sys.stderr)
            if not isinstance(e, InputError):
                import traceback

                traceback.print_exc()
            return _leave(role, 2 if isinstance(e, InputError) else 1)
        raise
    rank = summary["rank"]
    losses = " ".join(f"{k}={v:.4f}" for k, v in summary["losses"].items())
    where = f"{summary['prefix']}-{summary['checkpoint']:04d}" if summary.get("checkpoint") else "not saved"
    print(f"trained {cfg.config_name}: {summary['steps']} batches (epoch {summary['epoch']}, batch "
          f"{summary['batch']}), {summary['img_per_s']:.1f} img/s, losses {losses}, "
          f"{summary['nonfinite_skipped']} non-finite steps skipped; checkpoint {where}")
    for target, r in summary["best_verification"].items():
        print(f"  best {target}: accuracy {r['accuracy']:.5f} (checkpoint {summary['best_checkpoint']})")
    if args.json:
        write_json(args.json.replace("{rank}", str(rank)), summary)
    return 0


def _leave(role, code):
    if role == "worker":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
