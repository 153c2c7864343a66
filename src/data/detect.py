"""Raw photos -> aligned 112x112 faces with MTCNN, as InsightFace prepared its sets
(detect, take the 5 landmarks, similarity onto the ArcFace template; ShrinkTeaNet
Sec. 4.1).  Driver behind ``shrinkteanet data align --detector mtcnn``.

Output list (face2rec2 ``.lst``): one line per aligned face,
``1<TAB>aligned image<TAB>label<TAB>bbox x4<TAB>x1..x5<TAB>y1..y5``, bbox (integers, as
InsightFace's ``parse_lst_line`` reads them) and landmarks given in the aligned image's
pixels, so the line describes the file it names; the detection in the source photo goes
to the report.
"""
import collections
import os

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: Why a photo gave no aligned face.
UNREADABLE, NO_FACE, SEVERAL = "unreadable file", "no face", "several faces"

Photo = collections.namedtuple("Photo", ["path", "label", "rel"])


def collect_photos(src):
    """Photos of ``src``: a folder with one sub-folder per identity (sorted names give labels
    0..K-1, like ``data pack --image-folder``), a flat folder of photos (label 0), or a
    face2rec2 ``.lst`` (its paths and labels; bbox/landmarks in it are ignored).
    Returns a list of ``Photo(path, label, rel)``, ``rel`` naming the output file."""
    src = os.fspath(src)
    if os.path.isfile(src):
        from shrinkteanet.data.lst import read_lst

        root = os.path.dirname(os.path.abspath(src))
        photos = []
        for it in read_lst(src):
            rel = os.path.relpath(os.path.abspath(it.path), root)
            if rel.startswith(".."):
                rel = os.path.basename(it.path)
            photos.append(Photo(it.path, it.label, rel))
        return photos
    if not os.path.isdir(src):
        raise InputError(f"{src}: no such folder or .lst file")

    def images(d):
        return sorted(f for f in os.listdir(d)
                      if f.lower().endswith(IMAGE_EXT) and os.path.isfile(os.path.join(d, f)))

    subdirs = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    photos = []
    ids = [d for d in subdirs if images(os.path.join(src, d))]
    if ids:
        for label, name in enumerate(ids):
            for f in images(os.path.join(src, name)):
                photos.append(Photo(os.path.join(src, name, f), label, os.path.join(name, f)))
        loose = images(src)
        if loose:
            log.warning("%s: %d photos beside the identity folders are ignored", src, len(loose))
    else:
        photos = [Photo(os.path.join(src, f), 0, f) for f in images(src)]
    if not photos:
        raise InputError(f"{src}: no photos ({', '.join(IMAGE_EXT)})")
    return photos


def to_aligned_frame(info, image_size=112):
    """bbox (integer bounds of the transformed box) and landmarks of ``info`` in the aligned
    crop's pixels: the similarity ``norm_crop`` used."""
    from shrinkteanet.data.align import estimate_similarity, template

    lm = np.asarray(info["landmarks"], dtype=np.float64)
    m = estimate_similarity(lm, template(image_size))
    x1, y1, x2, y2 = info["bbox"]
    corners = np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]) @ m[:, :2].T + m[:, 2]
    bbox = np.concatenate([np.floor(corners.min(0)), np.ceil(corners.max(0))]).astype(int)
    return bbox, lm @ m[:, :2].T + m[:, 2]


def align_photos(photos, out_dir, detector=None, select="largest", image_size=112, quality=95, progress=True):
    """Detect and align every photo; aligned JPEGs go to ``out_dir/<rel>.jpg``.

    Returns ``(items, records)``: ``items`` the ``LstItem`` of each aligned face (for
    ``write_lst``), ``records`` one dict per photo: ``path``, ``label``, ``status`` ('ok',
    'unreadable file', 'no face', 'several faces'), ``num_faces``, and for aligned faces
    ``out``, ``bbox``, ``score``, ``landmarks`` in the source photo."""
    from tqdm import tqdm

    from shrinkteanet.data.lst import LstItem
    from shrinkteanet.data.mtcnn import detect_and_align, get_detector
    from shrinkteanet.data.images import encode_image, read_image_or_none
    from shrinkteanet.core.utils import atomic_write_bytes

    det = detector or get_detector()
    items, records = [], []
    for ph in tqdm(photos, unit="img", desc="detect+align", disable=not progress, leave=False):
        rec = {"path": ph.path, "label": int(ph.label), "status": UNREADABLE, "num_faces": 0}
        records.append(rec)
        img = read_image_or_none(ph.path, photo=True)  # camera shots: EXIF orientation
        if img is None:
            log.warning("%s: %s", ph.path, UNREADABLE)
            continue
        aligned, info = detect_and_align(img, det, select=select, image_size=image_size)
        rec.update(status=info["status"], num_faces=info["num_faces"])
        if aligned is None:
            log.warning("%s: %s", ph.path, info["status"])
            continue
        out = os.path.join(out_dir, os.path.splitext(ph.rel)[0] + ".jpg")
        atomic_write_bytes(out, encode_image(aligned, quality))
        bbox, lm = to_aligned_frame(info, image_size)
        rec.update(out=out, bbox=info["bbox"], score=info["score"], landmarks=info["landmarks"])
        items.append(LstItem(True, out, ph.label, bbox, lm))
    return items, records
