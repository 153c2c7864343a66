"""`shrinkteanet embed` and `shrinkteanet compare`: embeddings and same/different
answers for the user's own image files (``shrinkteanet.eval.image_files``)."""
from shrinkteanet.cli import GPUS_HELP_ONE, add_json_arg

ORDER = 61


def _common(p):
    p.add_argument("--model", required=True, metavar="PREFIX,EPOCH", help="checkpoint (fc1 embedding network)")
    p.add_argument("--landmarks", metavar="FILE", default=None,
                   help="5-point landmarks per image (PATH x1 y1 .. x5 y5, or a face2rec2 .lst): align onto the "
                   "ArcFace template; images without landmarks are centre-cropped")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the one the weights fit)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    p.add_argument("--gpus", default=None, help=f"GPU id (the first of a list is used; {GPUS_HELP_ONE})")


def register(sub):
    p = sub.add_parser("embed", help="embeddings of image files -> .npy (+ .txt list of the files embedded)",
                       description="Embed image files (directories are searched for images). Rows of OUT are "
                       "L2-normalised flip-fused embeddings, in the order of the files listed in OUT's .txt twin.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
    p.add_argument("--out", required=True, metavar="EMB.npy", help="output .npy (N, D) float32")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable file instead of skipping it")
    p.add_argument("--raw", action="store_true", help="keep the embeddings unnormalised")
    _common(p)
    add_json_arg(p)
    p.set_defaults(func=run_embed, outputs=outputs_embed)

    c = sub.add_parser("compare", help="cosine similarity of two face images and a same/different answer")
    c.add_argument("a", metavar="A", help="first image")
    c.add_argument("b", metavar="B", help="second image")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None,
                   help="cosine threshold: same when similarity >= T (default 0.3)")
    g.add_argument("--calibrate", metavar="SET.bin", default=None,
                   help="take the threshold from a verification set (InsightFace best-accuracy threshold)")
    _common(c)
    add_json_arg(c)
    c.set_defaults(func=run_compare, outputs=outputs_compare)


#: Free space per embedded image the check at the start asks for: a 512-d float32 row, and its file name.
BYTES_PER_IMAGE = 512 * 4 + 256


def outputs_embed(args):
    """``--out`` (.npy), its ``.txt`` twin and ``--json``; inputs: the checkpoint, the images and
    directories given, ``--landmarks``."""
    from shrinkteanet.cli import json_output
    from shrinkteanet.core.outputs import MIN_FREE, file_output
    from shrinkteanet.eval.image_files import expand_image_paths

    need = MIN_FREE + BYTES_PER_IMAGE * len(expand_image_paths(args.images))
    outs = [file_output("--out", args.out, need=need), file_output("--out", _names_path(args.out)), json_output(args)]
    return outs, _inputs(args, args.images)


def outputs_compare(args):
    """``compare`` writes only its ``--json``; never over one of its inputs."""
    from shrinkteanet.cli import json_output

    return [json_output(args)], _inputs(args, [args.a, args.b, args.calibrate])


def _inputs(args, paths):
    from shrinkteanet.cli import model_inputs
    from shrinkteanet.core.outputs import Input

    return model_inputs(args.model) + [Input(p, p) for p in [*paths, args.landmarks] if p]


def _context(args):
    from shrinkteanet.core.utils import get_contexts

    return get_contexts(args.gpus, one=True)[0]


def _names_path(out):
    import os

    root, ext = os.path.splitext(out)
    return (root if ext.lower() == ".npy" else out) + ".txt"


def run_embed(args):
    import numpy as np

    from shrinkteanet.core.errors import InputError
    from shrinkteanet.core.utils import atomic_open, parse_model_arg, write_json
    from shrinkteanet.eval import image_files

    model = parse_model_arg(args.model)
    paths = image_files.expand_image_paths(args.images)
    if not paths:
        raise InputError("no image files found in the given paths")
    landmarks = image_files.read_landmarks(args.landmarks) if args.landmarks else None
    embedder, size = image_files.make_embedder(model, args.batch_size, args.image_size, ctx=_context(args))
    emb, kept, skipped = image_files.embed_files(embedder, size, paths, landmarks=landmarks, strict=args.strict,
                                            flip=not args.no_flip, normalize=not args.raw)
    if not kept:
        raise InputError(f"none of the {len(paths)} files is a readable image")
    names = _names_path(args.out)
    with atomic_open(args.out, "wb") as f:
        np.save(f, emb.astype(np.float32))
    with atomic_open(names, "w") as f:
        f.write("".join(p + "\n" for p in kept))
    print(f"embedded {len(kept)} of {len(paths)} images ({size}x{size}, "
          f"{'aligned by landmarks where given' if landmarks else 'centre crop'}) -> {args.out} "
          f"{emb.shape[0]}x{emb.shape[1]}, file list {names}")
    for p, why in skipped:
        print(f"skipped {why}")
    if args.json:
        write_json(args.json, {"out": args.out, "names": names, "count": len(kept), "dim": int(emb.shape[1]),
                               "image_size": size, "normalized": not args.raw,
                               "skipped": [{"path": p, "reason": r} for p, r in skipped]})
    return 0


def run_compare(args):
    from shrinkteanet.core.utils import parse_model_arg, write_json
    from shrinkteanet.eval import image_files

    model = parse_model_arg(args.model)
    landmarks = image_files.read_landmarks(args.landmarks) if args.landmarks else None
    embedder, size = image_files.make_embedder(model, args.batch_size, args.image_size, ctx=_context(args))
    emb, kept, _ = image_files.embed_files(embedder, size, [args.a, args.b], landmarks=landmarks, strict=True,
                                      flip=not args.no_flip)
    cos = float(image_files.cosine_rows(emb[:1], emb[1:])[0])
    if args.calibrate:
        threshold, fields = image_files.calibrate_threshold(embedder, args.calibrate, size)
        source = f"calibrated on {args.calibrate} (accuracy {100 * fields['accuracy']:.2f}%)"
    elif args.threshold is not None:
        threshold, source = float(args.threshold), "given"
    else:
        threshold, source = image_files.DEFAULT_COSINE_THRESHOLD, "default; calibrate with --calibrate SET.bin"
    same = cos >= threshold
    print(f"{args.a}  vs  {args.b}")
    print(f"cosine similarity {cos:.4f} -> {'SAME' if same else 'DIFFERENT'} (threshold {threshold:.4f}, {source})")
    if args.json:
        write_json(args.json, {"a": args.a, "b": args.b, "cosine": cos, "threshold": threshold, "same": bool(same),
                               "threshold_source": source})
    return 0
