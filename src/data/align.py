"""5-point face alignment onto InsightFace's ArcFace template.

``estimate_similarity`` is Umeyama's closed-form least-squares similarity
(rotation, uniform scale, translation; Umeyama 1991, eq. 40-42), the transform
InsightFace's ``face_align.norm_crop`` obtains from scikit-image's
``SimilarityTransform.estimate``; no scikit-image is needed here.
``norm_crop`` warps with OpenCV like InsightFace.  When landmarks are missing,
``align_face`` falls back to InsightFace ``face_preprocess.preprocess``'s crop:
the bbox grown by a 44-pixel margin, or the centre of the image without a bbox.
"""
import numpy as np

from shrinkteanet.core.constants import ARCFACE_TEMPLATE, IMAGE_SIZE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


def estimate_similarity(src, dst):
    """2x3 matrix ``M`` minimising ``sum |M [src_i; 1] - dst_i|^2`` over similarity
    transforms (Umeyama's closed form, reflection excluded)."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise InputError(f"need two matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise InputError("degenerate landmarks: all points coincide")
    # Umeyama eq. 39/43: flip the last axis when that is what keeps a rotation.
    d = np.ones(2)
    if (rank == 2 and np.linalg.det(cov) < 0) or (rank == 1 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        d[-1] = -1.0
    r = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / n
    scale = (s * d).sum() / var_s
    t = mu_d - scale * (r @ mu_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = t
    return m


def template(image_size=IMAGE_SIZE):
    """ArcFace 5-point template for a square crop of ``image_size`` (InsightFace
    ``face_align``: scaled from 112, or from 128 with an 8-pixel x shift)."""
    size = int(image_size)
    if size % 112 == 0:
        ratio, dx = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        dx = 8.0 * ratio
    dst = ARCFACE_TEMPLATE.astype(np.float64) * ratio
    dst[:, 0] += dx
    return dst


def _landmarks(landmarks5):
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.size != 10:
        raise InputError(f"need 5 landmarks (x, y), got {lm.size} numbers")
    return lm.reshape(5, 2)


def norm_crop(img, landmarks5, image_size=IMAGE_SIZE):
    """Aligned ``image_size`` x ``image_size`` crop: the similarity that maps the
    five landmarks (left eye, right eye, nose, left/right mouth corner; x, y) onto
    the template, applied with bilinear ``cv2.warpAffine`` and a black border."""
    import cv2

    m = estimate_similarity(_landmarks(landmarks5), template(image_size))
    return cv2.warpAffine(np.asarray(img), m, (int(image_size), int(image_size)), borderValue=0.0)


def crop_fallback(img, bbox=None, image_size=IMAGE_SIZE, margin=44):
    """No landmarks: crop the bbox enlarged by ``margin`` pixels (or, with no bbox,
    the image minus 1/16 on each side) and resize, as InsightFace's
    ``face_preprocess.preprocess`` does."""
    import cv2

    img = np.asarray(img)
    h, w = img.shape[:2]
    if bbox is None:
        det = np.array([w * 0.0625, h * 0.0625, w - w * 0.0625, h - h * 0.0625])
    else:
        det = np.asarray(bbox, dtype=np.float64).ravel()[:4]
    x0 = int(max(det[0] - margin / 2, 0))
    y0 = int(max(det[1] - margin / 2, 0))
    x1 = int(min(det[2] + margin / 2, w))
    y1 = int(min(det[3] + margin / 2, h))
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"bbox {det.tolist()} lies outside the {w}x{h} image")
    crop = img[y0:y1, x0:x1]
    return cv2.resize(crop, (int(image_size), int(image_size)), interpolation=cv2.INTER_LINEAR)


def align_face(img, landmarks=None, bbox=None, image_size=IMAGE_SIZE, name="image"):
    """``norm_crop`` when landmarks are given, else ``crop_fallback`` with a warning."""
    if landmarks is not None:
        return norm_crop(img, landmarks, image_size)
    log.warning("%s: no landmarks; using the %s crop fallback", name, "bbox" if bbox is not None else "centre")
    return crop_fallback(img, bbox, image_size)
