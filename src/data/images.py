"""Image bytes and files <-> HWC uint8 RGB arrays: the one decoder and encoder of the package.

Two readings of the same bytes exist, as in InsightFace's own tools:

* crops (records, ``.bin`` pairs, aligned faces, evaluation images): JPEG through
  simplejpeg (libjpeg-turbo with the accurate integer DCT and fancy upsampling, the
  settings OpenCV's ``imdecode`` and ``mx.image.imdecode`` decode with, so the pixels
  equal InsightFace's), any other format (PNG, BMP, a JPEG flavour simplejpeg refuses)
  through ``cv2.imdecode``;
* photos (``photo=True``, camera shots before alignment): ``cv2.imdecode`` always,
  which turns the image upright by its EXIF orientation as ``cv2.imread`` does
  (simplejpeg ignores EXIF).

OpenCV and simplejpeg are imported on first use, so importing this module stays cheap.
"""
import os

import numpy as np

from shrinkteanet.core.errors import InputError

_JPEG_MAGIC = b"\xff\xd8"


def decode_image(data, *, photo=False):
    """HWC uint8 RGB array of encoded image bytes.

    Parameters
    ----------
    data : bytes-like
        A JPEG, PNG or any format OpenCV reads.
    photo : bool
        Apply the EXIF orientation (OpenCV for every format; see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8, RGB.

    Raises
    ------
    ValueError
        When the bytes decode as no image.
    """
    if not photo and bytes(data[:2]) == _JPEG_MAGIC:
        import simplejpeg

        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:  # progressive/arithmetic/CMYK flavours: OpenCV reads those
            pass
    import cv2

    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise ValueError("not a decodable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_image(path, *, photo=False):
    """HWC uint8 RGB array of an image file (``decode_image`` of its bytes).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    photo : bool
        See ``decode_image``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8, RGB.

    Raises
    ------
    InputError
        One line naming the file: missing, unreadable, or no image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return decode_image(data, photo=photo)
    except ValueError:
        raise InputError(f"{path}: not a readable image") from None


def read_image_or_none(path, *, photo=False):
    """``read_image``, or None when the file is missing, unreadable or no image: for
    loops over many files that count and report the ones they skip (IJB, MegaFace, photo
    folders)."""
    try:
        return read_image(path, photo=photo)
    except InputError:
        return None


def jpeg_size(data):
    """``(height, width)`` from a JPEG header without decoding, or None when ``data`` is
    no JPEG simplejpeg reads (face2rec2 stores aligned JPEGs of the right size as they are)."""
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return h, w


def encode_image(image, quality=95, image_size=None, *, subsampling="420"):
    """JPEG bytes of an RGB uint8 HWC image (passed through when already bytes).

    Parameters
    ----------
    image : numpy.ndarray or bytes-like
        ``(H, W, 3)`` uint8 RGB, or JPEG bytes returned unchanged.
    quality : int
        JPEG quality, as ``cv2.IMWRITE_JPEG_QUALITY`` (InsightFace's ``pack_img`` uses 95).
    image_size : (int, int), optional
        ``(H, W)`` the image must have; another size is an ``InputError``.
    subsampling : str
        Chroma subsampling: ``"420"`` is what OpenCV's ``imencode`` (InsightFace's
        ``pack_img``) writes; ``"444"`` is simplejpeg's own default.

    Returns
    -------
    bytes
    """
    import simplejpeg

    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"image must be HWC RGB uint8, got shape {arr.shape}")
    if image_size is not None and arr.shape[:2] != tuple(image_size):
        raise InputError(f"image is {arr.shape[0]}x{arr.shape[1]}, expected {image_size[0]}x{image_size[1]}")
    return simplejpeg.encode_jpeg(arr, quality=int(quality), colorspace="RGB", colorsubsampling=subsampling)
