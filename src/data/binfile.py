"""InsightFace verification sets: ``NAME.bin`` = pickle of ``(jpeg_list, issame_list)``.

InsightFace writes them with Python 2 (``str`` JPEGs, ``bool`` list) and reads with
``pickle.load(f, encoding='bytes')``.  Here every file goes through a restricted
unpickler: ``persistent_load`` refuses everything and ``find_class`` resolves exactly
one global, ``_codecs.encode``, to a stand-in that accepts only ``(str, 'latin1')`` and
returns bytes: Python 3 writes ``bytes`` that way under protocols 0-2.  No other global
(hence no other ``REDUCE`` callable) can be resolved, so nothing in the file runs; the
loaded object must then be lists/tuples of bytes/str and bools.  Python 2
``str`` JPEGs arrive as ``bytes`` (``encoding='bytes'``) or as latin-1 ``str``
(``encoding='latin1'``); both are turned back into the same bytes.
"""
import pickle

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


def _latin1_bytes(*args):
    """Stand-in for ``_codecs.encode`` in a pickle: only ``encode(str, 'latin1') -> bytes``,
    the call Python 3 pickles a ``bytes`` object as under protocols 0-2."""
    if len(args) != 2 or type(args[0]) is not str or args[1] != "latin1":
        shown = ", ".join(type(a).__name__ if not isinstance(a, str) or i == 0 else repr(a)
                          for i, a in enumerate(args))
        raise pickle.UnpicklingError(f"refused call _codecs.encode({shown}): only (str, 'latin1') is accepted")
    try:
        return args[0].encode("latin1")
    except UnicodeEncodeError:
        raise pickle.UnpicklingError("refused call _codecs.encode: the text is not latin-1") from None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def restricted_loads(data, encoding="bytes"):
    """Unpickle plain containers only (no globals, no reduce, no persistent ids)."""
    import io

    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def _as_bytes(x, path, i):
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, str):
        try:
            return x.encode("latin1")
        except UnicodeEncodeError:
            raise InputError(f"{path}: image {i} is text, not JPEG bytes") from None
    raise InputError(f"{path}: image {i} is a {type(x).__name__}, expected bytes")


def read_bin_raw(path, encoding="bytes"):
    """``(list of JPEG bytes, bool ndarray (P,))`` without decoding."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise InputError(f"{path}: empty file, not a verification set")
    try:
        obj = restricted_loads(data, encoding=encoding)
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: not a plain verification pickle ({e})") from None
    except Exception as e:  # truncated or garbage files
        raise InputError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise InputError(f"{path}: images and issame must be lists")
    bad = [i for i, v in enumerate(issame) if not isinstance(v, bool)]
    if bad:
        raise InputError(f"{path}: issame[{bad[0]}] is a {type(issame[bad[0]]).__name__}, expected bool")
    if not issame:
        raise InputError(f"{path}: no pairs in this verification set")
    if len(bins) != 2 * len(issame):
        raise InputError(f"{path}: {len(bins)} images for {len(issame)} pairs (need two per pair)")
    return [_as_bytes(b, path, i) for i, b in enumerate(bins)], np.asarray(issame, dtype=bool)


def load_bin(path, image_size=(IMAGE_SIZE, IMAGE_SIZE), encoding="bytes"):
    """``(images uint8 (2P, H, W, 3) RGB, issame bool (P,))`` from an InsightFace ``.bin``.

    Images of another size are resized to ``image_size`` (InsightFace's
    ``load_bin`` does the same with ``resize_short``); an undecodable image is an
    ``InputError`` naming its index.
    """
    import cv2

    from shrinkteanet.data.images import decode_image

    jpegs, issame = read_bin_raw(path, encoding)
    h, w = image_size
    out = np.empty((len(jpegs), h, w, 3), dtype=np.uint8)
    resized = 0
    for i, jpg in enumerate(jpegs):
        try:
            img = decode_image(jpg)
        except Exception:
            raise InputError(f"{path}: image {i} cannot be decoded") from None
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            resized += 1
        out[i] = img
    if resized:
        log.warning("%s: %d images resized to %dx%d", path, resized, h, w)
    return out, issame


def write_bin(path, jpegs, issame, quality=95):
    """Write ``(jpeg_list, issame_list)`` atomically.  ``jpegs``: JPEG bytes or RGB
    uint8 HWC arrays (encoded here).  Pickle protocol 4 so that ``bytes`` are stored
    as plain byte strings (protocol 2 would reduce them through ``_codecs.encode``,
    which other restricted readers may refuse); Python 3 InsightFace reads it."""
    from shrinkteanet.data.images import encode_image
    from shrinkteanet.core.utils import atomic_write_bytes

    bins = [encode_image(j, quality) for j in jpegs]
    flags = [bool(v) for v in np.asarray(issame).ravel()]
    if len(bins) != 2 * len(flags):
        raise InputError(f"{path}: {len(bins)} images for {len(flags)} pairs (need two per pair)")
    atomic_write_bytes(path, pickle.dumps((bins, flags), protocol=4))
