"""`shrinkteanet cache-teacher`: the teacher's final embeddings of a training set (and mirrors)."""
from shrinkteanet.cli import GPUS_HELP_ONE, add_json_arg

ORDER = 42


def register(sub):
    p = sub.add_parser("cache-teacher", help="store a teacher's embeddings of every training image and its mirror",
                       description="Compute the teacher's fc1 embedding of every image of a RecordIO set and of its "
                                   "mirror into CACHE (float16 memory map); `shrinkteanet train --teacher-cache "
                                   "CACHE` then skips the teacher's full forward pass.  Resumable.  The cache "
                                   "records the teacher's and the data's content (sha1): a cache of another "
                                   "source is refused, and replaced with --rebuild.")
    p.add_argument("--model", required=True, metavar="P,E", help="teacher checkpoint PREFIX,EPOCH")
    p.add_argument("--data", required=True, metavar="DIR", help="training set folder (train.rec/.idx/property)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder (created or completed)")
    p.add_argument("--gpus", default=None, help=f"one GPU id ({GPUS_HELP_ONE})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rebuild", action="store_true",
                   help="replace a cache built from another teacher or data (by content): the new one is filled "
                        "in CACHE/.rebuild and moved in once complete; the old one stays usable until then")
    add_json_arg(p)
    p.set_defaults(func=run, outputs=outputs)


#: Bytes per record the check at the start asks for: image and mirror of a 512-d float16 embedding, its key.
BYTES_PER_RECORD = 2 * 512 * 2 + 8


def outputs(args):
    """``--out`` (the cache folder: ``meta.json``, ``keys.npy``, ``emb.f16``; about
    ``BYTES_PER_RECORD`` per line of the set's ``.idx``) and ``--json``; inputs: the checkpoint
    and the set (its folder, ``.rec`` and ``.idx``)."""
    from shrinkteanet.cli import json_output, model_inputs
    from shrinkteanet.core.outputs import MIN_FREE, Input, folder_output
    from shrinkteanet.data.recordio import resolve_rec
    from shrinkteanet.training.teacher_cache import EMB, KEYS, META

    rec, idx, _ = resolve_rec(args.data)
    with open(idx, "rb") as f:
        records = sum(1 for _ in f)
    out = folder_output("--out", args.out, names=(META, KEYS, EMB), need=MIN_FREE + BYTES_PER_RECORD * records)
    inputs = model_inputs(args.model) + [Input(f"--data {args.data}", p) for p in (args.data, rec, idx)]
    return [out, json_output(args)], inputs


def run(args):
    from shrinkteanet.training.teacher_cache import build_cache
    from shrinkteanet.core.utils import get_contexts, write_json

    meta = build_cache(args.model, args.data, args.out, batch_size=args.batch_size,
                       ctx=get_contexts(args.gpus, one=True)[0], rebuild=args.rebuild)
    print(f"teacher cache {args.out}: {meta['done']} of {meta['num_images']} images x 2 (image, mirror), "
          f"embedding {meta['emb_size']}, float16")
    if args.json:
        write_json(args.json, dict(meta, path=args.out))
    return 0
