"""`shrinkteanet data ...`: build, inspect and align InsightFace-format face data.

Subcommands register themselves through one ``_register_<name>(dsub)`` function
each (returning its parser), so an option is added in one place.
"""
import os

from shrinkteanet.cli import add_json_arg
from shrinkteanet.core.errors import InputError

ORDER = 10


def register(sub):
    p = sub.add_parser("data", help="pack, inspect and align face data (InsightFace RecordIO/.lst/.bin)")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True
    _register_pack(dsub)
    _register_info(dsub)
    _register_align(dsub)
    _register_synth(dsub)


def _image_size(text):
    try:
        parts = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise InputError(f"--image-size must be N or H,W, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise InputError(f"--image-size must be N or H,W, got {text!r}")
    return tuple(parts)


def _workers(n):
    return max(1, os.cpu_count() or 1) if n is None else max(1, int(n))


# ----------------------------------------------------------------------------- pack


def _register_pack(dsub):
    p = dsub.add_parser("pack", help="build train.rec/.idx + property from a .lst or an image folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--lst", help="face2rec2 .lst (aligned, path, label[, bbox, 5 landmarks])")
    src.add_argument("--image-folder", help="one sub-folder per identity; sorted names give class ids 0..K-1")
    p.add_argument("--prefix", required=True, help="output prefix, e.g. OUT/train -> OUT/train.rec, OUT/property")
    p.add_argument("--root", default=None, help="folder that .lst paths are relative to (default: the .lst's)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    p.add_argument("--image-size", default="112", help="N or H,W of the stored faces (default 112)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.rec/.idx and property")
    add_json_arg(p)
    p.set_defaults(func=run_pack, outputs=outputs_pack)
    return p


def pack_outputs(args, need=None):
    """``PREFIX.rec``, ``PREFIX.idx`` and the folder's ``property`` (refused when present without
    ``--overwrite``; ``need``: bytes of the ``.rec``) and ``--json``; inputs: the ``.lst``."""
    from shrinkteanet.cli import json_output
    from shrinkteanet.core.outputs import MIN_FREE, Input, file_output

    hint = "pass --overwrite to replace the set"
    folder = os.path.dirname(os.path.abspath(args.prefix))
    outs = [file_output("--prefix", args.prefix + ".rec", replace=args.overwrite, hint=hint,
                        need=MIN_FREE + int(need or 0)),
            file_output("--prefix", args.prefix + ".idx", replace=args.overwrite, hint=hint),
            file_output("--prefix", os.path.join(folder, "property"), replace=args.overwrite, hint=hint),
            json_output(args)]
    return outs, [Input(f"--lst {args.lst}", args.lst)] if args.lst else []


def outputs_pack(args):
    return pack_outputs(args)


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def folder_items(root):
    """``LstItem`` per image of ``root/<identity>/<file>``: identities in sorted name
    order get labels 0..K-1, files sorted within each."""
    from shrinkteanet.data.lst import LstItem

    if not os.path.isdir(root):
        raise InputError(f"{root}: no such folder")
    items = []
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for label, name in enumerate(names):
        d = os.path.join(root, name)
        for f in sorted(os.listdir(d)):
            if f.lower().endswith(_IMAGE_EXT):
                items.append(LstItem(True, os.path.join(d, f), label, None, None))
    if not items:
        raise InputError(f"{root}: no images in identity sub-folders")
    return items, len(names)


def _prepare(job):
    """Worker: one list item -> (JPEG bytes of an aligned face, label, fallback?)."""
    from shrinkteanet.data.align import align_face
    from shrinkteanet.data.images import encode_image, jpeg_size, read_image

    item, size, quality = job
    fallback = False
    if item.aligned:
        try:
            with open(item.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InputError(f"{item.path}: cannot read ({e.strerror})") from None
        if jpeg_size(data) == tuple(size):
            return data, item.label, fallback  # stored as is, like face2rec2
        img = read_image(item.path, photo=True)
        if img.shape[:2] != tuple(size):
            raise InputError(f"{item.path}: aligned image is {img.shape[0]}x{img.shape[1]}, expected {size[0]}x{size[1]}")
    else:
        img = read_image(item.path, photo=True)
        fallback = item.landmarks is None
        img = align_face(img, item.landmarks, item.bbox, size[0], name=item.path)
        if size[0] != size[1]:
            import cv2

            img = cv2.resize(img, (size[1], size[0]))
    return encode_image(img, quality), item.label, fallback


def _prepared_stream(items, size, quality, workers):
    jobs = ((it, size, quality) for it in items)
    if workers <= 1:
        yield from map(_prepare, jobs)
        return
    from shrinkteanet.core.utils import process_pool

    with process_pool(workers) as pool:
        yield from pool.imap(_prepare, jobs, chunksize=16)


class _FallbackCounter:
    """``(jpeg, label)`` samples of a prepared stream, counting the faces that took the crop fallback."""

    def __init__(self, stream):
        self.stream = stream
        self.count = 0

    def __iter__(self):
        for jpg, label, fallback in self.stream:
            self.count += fallback
            yield jpg, label


def _source_bytes(items):
    """Bytes of the listed image files (a packed set holds about as much; missing files count 0)."""
    total = 0
    for it in items:
        try:
            total += os.path.getsize(it.path)
        except OSError:
            continue
    return total


def run_pack(args):
    from shrinkteanet.core.outputs import check_outputs
    from shrinkteanet.core.utils import write_json
    from shrinkteanet.data.lst import read_lst
    from shrinkteanet.data.recordio import write_rec_set

    size = _image_size(args.image_size)
    if args.lst:
        items = read_lst(args.lst, args.root)
        num_classes = None
    else:
        items, num_classes = folder_items(args.image_folder)
    # write_rec_set needs identities contiguous; a stable sort keeps the list order within one.
    items = sorted(items, key=lambda it: it.label)
    check_outputs(*pack_outputs(args, need=_source_bytes(items)))  # the space for what was found
    out_dir = os.path.dirname(os.path.abspath(args.prefix))
    name = os.path.basename(args.prefix)
    samples = _FallbackCounter(_prepared_stream(items, size, args.quality, _workers(args.workers)))
    res = write_rec_set(
        out_dir, iter(samples), num_classes=num_classes, quality=args.quality, workers=1, image_size=size,
        name=name, total=len(items),
    )
    res.update(image_size=list(size), num_fallback=samples.count, idx=os.path.splitext(res["rec"])[0] + ".idx")
    print(
        f"packed {res['num_images']} images of {res['num_ids']} identities ({res['num_classes']} classes) "
        f"into {res['rec']}" + (f"; {samples.count} without landmarks used the crop fallback" if samples.count else "")
    )
    if args.json:
        write_json(args.json, res)
    return 0


# ----------------------------------------------------------------------------- info


def _register_info(dsub):
    p = dsub.add_parser("info", help="counts and label histogram of a RecordIO set")
    p.add_argument("path", help="set folder, its .rec, or its prefix")
    p.add_argument("--verify", action="store_true", help="also decode every image and count corrupt ones")
    add_json_arg(p)
    p.set_defaults(func=run_info)
    return p


_BUCKETS = ((1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None))


def set_info(path, verify=False):
    import numpy as np

    from shrinkteanet.data.recordio import FaceRecordDataset

    ds = FaceRecordDataset(path)
    if ds.identity_ranges:
        counts = np.array([b - a for a, b in ds.identity_ranges], dtype=np.int64)
    else:
        labels = np.array([ds.label_of(k) for k in ds.record_ids], dtype=np.int64)
        counts = np.bincount(labels)
        counts = counts[counts > 0]
    hist = {}
    for lo, hi in _BUCKETS:
        sel = (counts >= lo) if hi is None else (counts >= lo) & (counts <= hi)
        hist[f"{lo}+" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}")] = int(sel.sum())
    info = {
        "rec": ds.path_rec,
        "num_images": int(len(ds)),
        "num_ids": int(len(counts)),
        "num_classes": int(ds.num_classes),
        "image_size": list(ds.image_size) if ds.image_size else None,
        "has_header": ds.header0 is not None,
        "images_per_id": {
            "min": int(counts.min()) if len(counts) else 0,
            "median": float(np.median(counts)) if len(counts) else 0.0,
            "mean": float(counts.mean()) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0,
        },
        "images_per_id_histogram": hist,
    }
    if verify:
        from tqdm import tqdm

        for k in tqdm(ds.record_ids, unit="img", desc="verify", leave=False):
            ds.read_key(int(k))
        info["num_corrupt"] = ds.num_corrupt
        info["corrupt_keys"] = sorted(int(k) for k in ds.corrupt_keys)
    return info


def run_info(args):
    from shrinkteanet.core.utils import write_json

    info = set_info(args.path, args.verify)
    s = info["images_per_id"]
    print(f"{info['rec']}")
    size = "x".join(map(str, info["image_size"])) if info["image_size"] else "unknown (no property)"
    print(f"  images {info['num_images']}  identities {info['num_ids']}  classes {info['num_classes']}  size {size}")
    print(f"  images per identity: min {s['min']}  median {s['median']:g}  mean {s['mean']:.2f}  max {s['max']}")
    print("  histogram: " + "  ".join(f"{k}: {v}" for k, v in info["images_per_id_histogram"].items()))
    if "num_corrupt" in info:
        print(f"  corrupt images: {info['num_corrupt']}")
    if args.json:
        write_json(args.json, info)
    return 0


# ----------------------------------------------------------------------------- align


def _register_align(dsub):
    p = dsub.add_parser("align", help="5-point similarity alignment of a .lst to 112x112 (InsightFace template)")
    p.add_argument("--lst", default=None, help="face2rec2 .lst with bbox and 5 landmarks per line "
                   "(with --detector mtcnn: the output list)")
    p.add_argument("--out-dir", "--out", required=True, help="aligned images go here, mirroring the input paths")
    p.add_argument("--out-lst", default=None, help="list of the aligned images (default OUT_DIR/aligned.lst)")
    p.add_argument("--root", default=None, help="folder that .lst paths are relative to (default: the .lst's)")
    p.add_argument("--image-size", type=int, default=112, help="side of the aligned crop (default 112)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    from shrinkteanet.cli import _mtcnn_align  # --detector mtcnn on raw photos (issue 11)

    _mtcnn_align.add_arguments(p)
    add_json_arg(p)
    p.set_defaults(func=run_align, outputs=outputs_align)
    return p


def outputs_align(args):
    """The aligned images' folder, the output list and ``--json``; inputs: the list or photos read."""
    from shrinkteanet.cli import json_output
    from shrinkteanet.core.outputs import Input, file_output, folder_output

    mtcnn = args.detector == "mtcnn"
    out_lst = (args.lst if mtcnn else None) or args.out_lst or os.path.join(args.out_dir, "aligned.lst")
    source = args.src if mtcnn else args.lst
    return ([folder_output("--out", args.out_dir), file_output("--lst" if mtcnn and args.lst else "--out-lst", out_lst),
             json_output(args)], [Input(f"input {source}", source)] if source else [])


def _align_one(job):
    from shrinkteanet.core.utils import atomic_write_bytes
    from shrinkteanet.data.align import align_face
    from shrinkteanet.data.images import encode_image, read_image

    item, out_path, size, quality = job
    img = read_image(item.path, photo=True)  # photos: EXIF orientation, as cv2.imread
    if item.aligned and item.landmarks is None:
        import cv2

        out = img if img.shape[:2] == (size, size) else cv2.resize(img, (size, size))
        fallback = False
    else:
        fallback = item.landmarks is None
        out = align_face(img, item.landmarks, item.bbox, size, name=item.path)
    atomic_write_bytes(out_path, encode_image(out, quality))
    return fallback


def run_align(args):
    from shrinkteanet.data.lst import LstItem, read_lst, write_lst
    from shrinkteanet.core.utils import write_json

    if args.detector == "mtcnn":
        from shrinkteanet.cli._mtcnn_align import run

        return run(args)
    if not args.lst or args.src:
        raise InputError("data align: give --lst LIST with landmarks, or --detector mtcnn SRC_DIR_OR_LST")
    items = read_lst(args.lst, args.root)
    root = os.path.abspath(args.root) if args.root else os.path.dirname(os.path.abspath(args.lst))
    out_dir = os.path.abspath(args.out_dir)
    out_lst = args.out_lst or os.path.join(out_dir, "aligned.lst")
    jobs, out_items = [], []
    for it in items:
        rel = os.path.relpath(os.path.abspath(it.path), root)
        if rel.startswith(".."):
            rel = os.path.basename(it.path)
        out_path = os.path.join(out_dir, os.path.splitext(rel)[0] + ".jpg")
        jobs.append((it, out_path, args.image_size, args.quality))
        out_items.append(LstItem(True, out_path, it.label, None, None))
    workers = _workers(args.workers)
    from tqdm import tqdm

    if workers > 1:
        from shrinkteanet.core.utils import process_pool

        with process_pool(workers) as pool:
            flags = list(tqdm(pool.imap(_align_one, jobs, chunksize=8), total=len(jobs), unit="img", leave=False))
    else:
        flags = [_align_one(j) for j in tqdm(jobs, unit="img", leave=False)]
    write_lst(out_lst, out_items, root=os.path.dirname(os.path.abspath(out_lst)))
    res = {"num_images": len(jobs), "num_fallback": int(sum(flags)), "out_dir": out_dir, "out_lst": out_lst}
    print(
        f"aligned {res['num_images']} faces to {args.image_size}x{args.image_size} in {out_dir}"
        + (f" ({res['num_fallback']} without landmarks: crop fallback)" if res["num_fallback"] else "")
        + f"; list {out_lst}"
    )
    if args.json:
        write_json(args.json, res)
    return 0


# ----------------------------------------------------------------------------- synth


def _register_synth(dsub):
    p = dsub.add_parser("synth", help="synthetic face-like identities in every data format (train, .bin, IJB-C, MegaFace)")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--identities", type=int, default=100, help="training identities (default 100)")
    p.add_argument("--images-per-id", type=int, default=20, help="training images per identity (default 20)")
    p.add_argument("--test-identities", type=int, default=100, help="identities per verification target (default 100)")
    p.add_argument("--pairs", type=int, default=600, help="pairs per .bin, half same (default 600; LFW has 6000)")
    p.add_argument("--val-pairs", type=int, default=0, help="pairs of the validation set val.bin, identities "
                   "disjoint from training and every test set (default 0: none; the fair study uses 6000)")
    p.add_argument("--val-identities", type=int, default=None,
                   help="identities of the validation set (default: --test-identities)")
    p.add_argument("--ijb-templates", type=int, default=200, help="IJB-C templates (default 200)")
    p.add_argument("--megaface-probes", type=int, default=20, help="FaceScrub-like probe identities (default 20)")
    p.add_argument("--megaface-probe-images", type=int, default=6, help="images per probe identity (default 6)")
    p.add_argument("--megaface-distractors", type=int, default=1000, help="MegaFace distractors (default 1000)")
    p.add_argument("--megaface-noise", type=float, default=0.005, help="fraction of mislabelled probes/distractors "
                   "listed in the noise files (default 0.005)")
    p.add_argument("--difficulty", type=float, default=None, help="nuisance strength, 0 = none (default 1.3, calibrated)")
    p.add_argument("--image-size", type=int, default=112, help="side of the aligned faces (default 112)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--no-ijb", action="store_true", help="skip the IJB-C tree")
    p.add_argument("--no-megaface", action="store_true", help="skip the MegaFace tree")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a suite (train.rec, .bin, IJBC/, ...) in OUT")
    add_json_arg(p)
    p.set_defaults(func=run_synth, outputs=outputs_synth)
    return p


def outputs_synth(args):
    """``synth.synth_outputs`` (every file and tree of the suite, refused when present without
    ``--overwrite``; space: ``synth.estimate_bytes``) and ``--json``."""
    from shrinkteanet.cli import json_output
    from shrinkteanet.data import synth

    images = synth.rendered_images(args.identities, args.images_per_id, args.pairs, args.ijb_templates,
                                   args.megaface_probes, args.megaface_probe_images, args.megaface_distractors,
                                   ijb=not args.no_ijb, megaface=not args.no_megaface, val_pairs=max(args.val_pairs, 0))
    outs = synth.synth_outputs(args.out, overwrite=args.overwrite, ijb=not args.no_ijb, megaface=not args.no_megaface,
                               need=synth.estimate_bytes(images, args.image_size), val=args.val_pairs > 0)
    return outs + [json_output(args)], []


def run_synth(args):
    from shrinkteanet.data import face_render, synth
    from shrinkteanet.core.utils import write_json

    res = synth.generate(
        args.out, identities=args.identities, images_per_id=args.images_per_id, test_identities=args.test_identities,
        pairs=args.pairs, ijb_templates=args.ijb_templates, megaface_probes=args.megaface_probes,
        megaface_probe_images=args.megaface_probe_images, megaface_distractors=args.megaface_distractors,
        megaface_noise=args.megaface_noise,
        difficulty=face_render.DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty,
        image_size=args.image_size, seed=args.seed, ijb=not args.no_ijb, megaface=not args.no_megaface,
        workers=_workers(args.workers), quality=args.quality, overwrite=args.overwrite,
        val_pairs=args.val_pairs, val_identities=args.val_identities,
    )
    print(synth.format_summary(res))
    if args.json:
        write_json(args.json, res)
    return 0
