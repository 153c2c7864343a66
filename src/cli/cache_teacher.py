"""`shrinkteanet cache-teacher`: the teacher's final embeddings of a training set (and mirrors)."""
from shrinkteanet.cli import add_json_arg

ORDER = 42


def register(sub):
    p = sub.add_parser("cache-teacher", help="store a teacher's embeddings of every training image and its mirror",
                       description="Compute the teacher's fc1 embedding of every image of a RecordIO set and of its "
                                   "mirror into CACHE (float16 memory map); `shrinkteanet train --teacher-cache "
                                   "CACHE` then skips the teacher's full forward pass.  Resumable.")
    p.add_argument("--model", required=True, metavar="P,E", help="teacher checkpoint PREFIX,EPOCH")
    p.add_argument("--data", required=True, metavar="DIR", help="training set folder (train.rec/.idx/property)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder (created or completed)")
    p.add_argument("--gpus", default=None, help="one GPU id (default: CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args):
    from shrinkteanet.training.teacher_cache import build_cache
    from shrinkteanet.core.utils import get_contexts, write_json

    meta = build_cache(args.model, args.data, args.out, batch_size=args.batch_size, ctx=get_contexts(args.gpus)[0])
    print(f"teacher cache {args.out}: {meta['done']} of {meta['num_images']} images x 2 (image, mirror), "
          f"embedding {meta['emb_size']}, float16")
    if args.json:
        write_json(args.json, dict(meta, path=args.out))
    return 0
