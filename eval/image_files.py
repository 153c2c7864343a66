"""Image files -> faces -> embeddings, for ``shrinkteanet embed`` and ``compare``.

Files are read by the package's one reader (``shrinkteanet.data.images.read_image``);
faces are aligned onto the ArcFace template when 5-point landmarks are given, else
centre-cropped; the embedding is the evaluation ``Embedder``'s (flip-fused ``fc1``, as
InsightFace's verification).  A cosine threshold comes from the user, a default, or a
``.bin`` verification set (InsightFace's best-accuracy threshold).
"""
import os

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.data.images import decode_image, read_image
from shrinkteanet.eval.embed import Embedder, load_model, model_input_size, require_input_size

log = get_logger(__name__)

#: Cosine threshold of ``compare`` when none is given or calibrated: squared-L2
#: distance 1.4 between unit embeddings, about where InsightFace's LFW thresholds
#: for ArcFace-trained models lie (``cos = 1 - d / 2``).
DEFAULT_COSINE_THRESHOLD = 0.3

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def expand_image_paths(paths):
    """Files as given; a directory becomes its image files (sorted, recursive)."""
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out


def centre_crop(img, image_size):
    """Central square of the image, resized to ``image_size`` (no landmarks given).
    An image already ``image_size`` square is returned unchanged (an aligned crop)."""
    import cv2

    h, w = img.shape[:2]
    if h == w == image_size:
        return img
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    sq = img[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s > image_size else cv2.INTER_LINEAR
    return cv2.resize(sq, (image_size, image_size), interpolation=interp)


def read_landmarks(path):
    """``{image path: (5, 2) landmarks}`` from a text file, one image per line:
    ``PATH x1 y1 ... x5 y5`` (whitespace, tab or comma separated), or a face2rec2
    ``.lst`` line ``aligned PATH label [bbox x4] x1 y1 ... x5 y5``: the path and the
    last ten numbers are used.  Lookup accepts the path as written, its absolute
    path or, when unique, its base name."""
    table = {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read landmarks file ({e})") from None
    for ln, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) == 11:
            name, nums = parts[0], parts[1:]
        elif len(parts) >= 13 and len(parts) in (13, 17):
            name, nums = parts[1], parts[-10:]
        else:
            raise InputError(f"{path}:{ln}: expected PATH and 10 landmark numbers, got {len(parts)} fields")
        try:
            lm = np.asarray([float(v) for v in nums], dtype=np.float64).reshape(5, 2)
        except ValueError:
            raise InputError(f"{path}:{ln}: landmark values must be numbers") from None
        table[name] = lm
    return _LandmarkTable(table)


class _LandmarkTable(dict):
    def find(self, image_path):
        if image_path in self:
            return self[image_path]
        ap = os.path.abspath(image_path)
        for k, v in self.items():
            if os.path.abspath(k) == ap:
                return v
        base = os.path.basename(image_path)
        hits = [v for k, v in self.items() if os.path.basename(k) == base]
        return hits[0] if len(hits) == 1 else None


def prepare_faces(paths, image_size, *, landmarks=None, strict=False, progress=None):
    """Read and crop image files: ``(faces uint8 (N, S, S, 3), kept paths, skipped
    [(path, reason)])``.  With ``landmarks`` the face is aligned onto the ArcFace
    template (``shrinkteanet.data.align.norm_crop``), otherwise centre-cropped.
    Unreadable files are named in the log and skipped, or raise with ``strict``."""
    from shrinkteanet.data.align import norm_crop

    faces, kept, skipped = [], [], []
    for p in paths:
        try:
            img = read_image(p)
        except InputError as e:
            if strict:
                raise
            log.warning("skipping %s", e)
            skipped.append((p, str(e)))
            if progress is not None:
                progress.update(1)
            continue
        lm = landmarks.find(p) if landmarks is not None else None
        if landmarks is not None and lm is None:
            log.warning("%s: no landmarks in the landmarks file; centre crop", p)
        faces.append(norm_crop(img, lm, image_size) if lm is not None else centre_crop(img, image_size))
        kept.append(p)
        if progress is not None:
            progress.update(1)
    arr = np.stack(faces) if faces else np.zeros((0, image_size, image_size, 3), np.uint8)
    return arr, kept, skipped


def make_embedder(model, batch_size=64, image_size=None, ctx=None):
    """``(embedder, image_size)`` for a checkpoint: the evaluation helper's
    ``Embedder`` (flip fusion, MKLDNN, survives the TBlob bug) on the checkpoint's
    fc1 graph, at its input size (``image_size`` must fit the weights), on ``ctx`` (default CPU)."""
    from shrinkteanet.eval.embed import model_name

    sym, arg, aux = load_model(model)
    if image_size is None:
        image_size = model_input_size(sym, arg)
    else:
        require_input_size(sym, arg, image_size, what="--image-size")
    embedder = Embedder(model=(sym, arg, aux), ctx=ctx, batch_size=batch_size, image_size=image_size,
                        name=model_name(model))
    return embedder, int(image_size)


def normalize_rows(x):
    """Rows scaled to unit L2 norm (float32), as InsightFace's ``sklearn.preprocessing.normalize``."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_files(embedder, image_size, paths, *, landmarks=None, strict=False, chunk=512, flip=True, normalize=True):
    """Embeddings of image files, in chunks (bounded memory), with a progress bar
    for more than a few files: ``(emb float32 (N, D), kept paths, skipped)``."""
    from tqdm import tqdm

    out, kept, skipped = [], [], []
    with tqdm(total=len(paths), unit="img", desc="embed", disable=len(paths) <= 32 or None) as bar:
        for i in range(0, len(paths), chunk):
            faces, k, s = prepare_faces(paths[i : i + chunk], image_size, landmarks=landmarks, strict=strict,
                                        progress=bar)
            kept += k
            skipped += s
            if len(faces):
                out.append(embedder.embed(faces, flip=flip))
    emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    if normalize and len(emb):
        emb = normalize_rows(emb)
    return emb, kept, skipped


def calibrate_threshold(embedder, bin_path, image_size):
    """Cosine threshold from a ``.bin`` set: InsightFace's best-accuracy squared-L2
    threshold ``d`` (mean over folds) between unit embeddings, as ``1 - d / 2``.
    Returns ``(cosine threshold, verification fields)``."""
    from shrinkteanet.eval.verification import evaluate

    images, issame = load_bin_checked(bin_path, image_size)
    fields = evaluate(embedder.embed(images, flip=True), issame)
    return 1.0 - fields["threshold"] / 2.0, fields


def cosine_rows(a, b):
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def load_bin_checked(path, image_size):
    """``load_bin`` at the model's size; a set of another size is refused (naming
    both sizes) rather than resized, so a figure is never silently measured on
    rescaled faces."""
    from shrinkteanet.data.binfile import load_bin, read_bin_raw

    jpegs, _ = read_bin_raw(path)
    if len(jpegs):
        try:
            h, w = decode_image(jpegs[0]).shape[:2]
        except ValueError:
            raise InputError(f"{path}: image 0 cannot be decoded") from None
        if (h, w) != (image_size, image_size):
            raise InputError(f"model expects {image_size}x{image_size} input but {path} holds {h}x{w} images")
    return load_bin(path, image_size=(image_size, image_size))
