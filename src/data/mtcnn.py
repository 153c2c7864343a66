"""MTCNN face detector (Zhang et al. 2016, "Joint face detection and alignment using
multi-task cascaded convolutional networks") on MXNet/Gluon.

The ShrinkTeaNet paper (Sec. 4.1), like InsightFace, prepares every face with MTCNN's
five landmarks and a similarity transform onto the 112x112 ArcFace template.  This
module is that first step for raw photos: P-Net over an image pyramid, R-Net and O-Net
on the surviving boxes, with the weights of the ``mtcnn==1.0.0`` wheel.

Weights.  The wheel keeps P/R/O-Net as plain arrays (``mtcnn/assets/weights/*.lz4``,
``joblib`` + ``lz4``) in Keras layout: HWIO convolutions, ``(1, 1, C)`` PReLU alphas and,
for R/O-Net, a ``Permute((2, 1, 3))`` before the flatten, so the first dense layer reads
its input in (W, H, C) order.  :func:`converted_params` turns them once into MXNet
``.params`` (OIHW kernels, dense rows re-ordered for MXNet's (C, H, W) flatten), cached
under the user cache directory, keyed by the SHA-256 of the source file and verified by
a checksum beside it.  The sources are pickles, so they are opened only when their
SHA-256 is that of the 1.0.0 wheel.

Pipeline (``mtcnn 1.0.0``'s ``StagePNet`` / ``StageRNet`` / ``StageONet``):

* input RGB, normalised ``(x - 127.5) / 128``;
* pyramid ``(12 / min_face_size) * 0.709**k``, ``k < round(-(log(min_dim/12)/log(0.709) + 1))``,
  each level an area-average resize;
* P-Net cell ``(y, x)`` -> window ``[2x, 2x+12) x [2y, 2y+12)``, regression applied at once
  (offsets times 12), boxes divided by the scale; NMS 0.5 per level, 0.7 over all levels;
  boxes made square;
* R-Net / O-Net on 24x24 / 48x48 bilinear crops taken as TensorFlow's ``crop_and_resize``
  does (boxes normalised by the image size, sampled on ``(size - 1)`` steps, 0 outside);
  offsets times ``(x2 - x1 + 1, y2 - y1 + 1)``; O-Net landmarks ``w * l + x1 - 1`` on the
  box before its regression (x1..x5 then y1..y5); NMS 0.7 (union, then min);
* NMS is the wheel's: a box is dropped when any higher-scored box overlaps it by more than
  the threshold (also one that was dropped itself);
* final boxes are clipped to the image, landmarks are not.

Thresholds default to 0.6 / 0.7 / 0.7 (the MTCNN paper's and facenet's values; the wheel's
O-Net default is 0.8).

Speed.  The nets are hybridized (static_alloc, static_shape); R-Net and O-Net run on all
boxes of a photo in one batch padded to a few fixed sizes, so their graphs are reused.
P-Net runs level by level by default.  ``mosaic=True`` instead packs the levels side by
side into one canvas (even offsets, a 2-pixel zero gutter) for a single P-Net run; a cell
then sees exactly the pixels of its own level, except the last row/column of a level of
odd size, whose window reaches one pixel into the gutter where Keras pools over the
level's edge.  On the 2-core CPU of docs/benchmarks.md the packed run was the slower one
(MKLDNN convolutions lose more on the larger, 28% emptier canvas than the per-call
overhead of ten small runs), hence the default.
"""
import hashlib
import importlib.metadata
import math
import os

import numpy as np

from shrinkteanet.core.constants import PIXEL_MEAN, PIXEL_SCALE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import atomic_open, atomic_path

log = get_logger(__name__)

NETS = ("pnet", "rnet", "onet")

#: SHA-256 of the weight files shipped in the mtcnn 1.0.0 wheel (the only ones unpickled).
SOURCE_SHA256 = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}

#: Layer order of each Keras model, as its ``get_weights()`` lists them:
#: (gluon attribute, kind); kinds: conv = kernel+bias, prelu = alpha, dense = kernel+bias,
#: dense_perm = dense after ``Permute((2, 1, 3))`` + flatten.
LAYOUT = {
    "pnet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4_1", "conv"), ("conv4_2", "conv")],
    "rnet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("fc4", "dense_perm"), ("prelu4", "prelu"),
             ("fc5_1", "dense"), ("fc5_2", "dense")],
    "onet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4", "conv"), ("prelu4", "prelu"),
             ("fc5", "dense_perm"), ("prelu5", "prelu"), ("fc6_1", "dense"), ("fc6_2", "dense"),
             ("fc6_3", "dense")],
}

#: Batch sizes R-Net / O-Net are padded to (then multiples of the last one).
_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# --------------------------------------------------------------------------- weights

def cache_dir():
    """``$SHRINKTEANET_CACHE`` or ``$XDG_CACHE_HOME/shrinkteanet`` or ``~/.cache/shrinkteanet``."""
    d = os.environ.get("SHRINKTEANET_CACHE")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "shrinkteanet")
    return d


def weights_source(name):
    """Path of ``mtcnn/assets/weights/<name>.lz4`` in the installed wheel, found without
    importing ``mtcnn`` (its ``__init__`` needs TensorFlow)."""
    try:
        dist = importlib.metadata.distribution("mtcnn")
    except importlib.metadata.PackageNotFoundError:
        raise InputError("MTCNN weights: package mtcnn==1.0.0 is not installed "
                         "(pip install -c constraints.txt mtcnn==1.0.0)") from None
    path = str(dist.locate_file(f"mtcnn/assets/weights/{name}.lz4"))
    if not os.path.isfile(path):
        raise InputError(f"MTCNN weights: {path} is missing from the installed mtcnn package")
    return path


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_keras_weights(name):
    """The wheel's arrays for ``name`` (list, Keras ``get_weights()`` order), after checking
    the file's SHA-256 against the 1.0.0 wheel (the file is a pickle)."""
    path = weights_source(name)
    digest = _sha256(path)
    if digest != SOURCE_SHA256[name]:
        raise InputError(f"MTCNN weights: {path} has SHA-256 {digest[:16]}..., not that of mtcnn 1.0.0; "
                         "reinstall mtcnn==1.0.0")
    import joblib

    return [np.asarray(a, dtype=np.float32) for a in joblib.load(path)]


def keras_to_gluon(name, arrays):
    """Map the Keras arrays of ``name`` to Gluon parameter names and layouts."""
    arrays = list(arrays)
    out = {}
    for attr, kind in LAYOUT[name]:
        if kind == "conv":
            k, b = arrays.pop(0), arrays.pop(0)
            out[f"{attr}.weight"] = np.ascontiguousarray(k.transpose(3, 2, 0, 1))
            out[f"{attr}.bias"] = b
        elif kind == "prelu":
            out[f"{attr}.alpha"] = arrays.pop(0).reshape(-1)
        elif kind == "dense":
            k, b = arrays.pop(0), arrays.pop(0)
            out[f"{attr}.weight"] = np.ascontiguousarray(k.T)
            out[f"{attr}.bias"] = b
        else:  # dense_perm: Keras rows are (w, h, c) of a square map; MXNet flattens (c, h, w)
            k, b = arrays.pop(0), arrays.pop(0)
            units = k.shape[1]
            prev = out[f"conv{int(attr[2]) - 1}.weight"]
            c = prev.shape[0]
            side = int(round(math.sqrt(k.shape[0] // c)))
            k = k.reshape(side, side, c, units).transpose(3, 2, 1, 0).reshape(units, -1)
            out[f"{attr}.weight"] = np.ascontiguousarray(k)
            out[f"{attr}.bias"] = b
    if arrays:
        raise InputError(f"MTCNN weights: {name}.lz4 has {len(arrays)} unexpected extra arrays")
    return out


def converted_params(name):
    """Path of the MXNet ``.params`` of ``name``, converting the wheel's weights on first
    use.  Cached as ``<cache>/mtcnn/<name>-<sha16>.params`` with a ``.sha256`` beside it;
    a cached file whose checksum does not match is converted again."""
    import mxnet as mx

    src = weights_source(name)
    key = SOURCE_SHA256[name][:16]
    d = os.path.join(cache_dir(), "mtcnn")
    path = os.path.join(d, f"{name}-{key}.params")
    sums = path + ".sha256"
    if os.path.isfile(path) and os.path.isfile(sums):
        with open(sums) as f:
            if f.read().strip() == _sha256(path):
                return path
        log.warning("MTCNN: cached %s fails its checksum; converting again", path)
    arrays = keras_to_gluon(name, load_keras_weights(name))
    with atomic_path(path) as tmp:  # mx.nd.save writes by file name
        mx.nd.save(tmp, {k: mx.nd.array(v, dtype="float32") for k, v in arrays.items()})
        digest = _sha256(tmp)
    with atomic_open(sums, "w") as f:
        f.write(digest + "\n")
    log.info("MTCNN: converted %s -> %s", src, path)
    return path


# --------------------------------------------------------------------------- networks

def _blocks():
    """Network name -> Gluon block class (``mtcnn_nets`` imports mxnet, hence the late import)."""
    from shrinkteanet.data.mtcnn_nets import NETWORKS

    return NETWORKS


def load_net(name, ctx=None, hybridize=True):
    """A Gluon block of ``name`` ('pnet', 'rnet', 'onet') with the converted weights.
    Input NCHW float32 RGB already normalised ``(x - 127.5) / 128``."""
    import mxnet as mx

    if name not in NETS:
        raise InputError(f"MTCNN: unknown network {name!r} (pnet, rnet, onet)")
    net = _blocks()[name](prefix=f"{name}_")
    net.load_parameters(converted_params(name), ctx=ctx or mx.cpu())
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


# --------------------------------------------------------------------------- box helpers

def scale_pyramid(width, height, min_face_size=20, scale_factor=0.709, min_size=12):
    """Pyramid scales of the mtcnn wheel (``build_scale_pyramid``)."""
    min_dim = min(width, height)
    if min_dim <= 0:
        return np.zeros(0)
    count = round(-((np.log(min_dim / min_size) / np.log(scale_factor)) + 1))
    return (min_size / min_face_size) * scale_factor ** np.arange(max(count, 0))


def iou_matrix(a, b, method="union"):
    """Pairwise overlap of boxes ``a`` (N,4) and ``b`` (M,4), [x1, y1, x2, y2], areas
    without the +1 (as the wheel's ``iou``); ``method='min'`` divides by the smaller area."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    ih = np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            return inter / (area_a[:, None] + area_b[None, :] - inter)
        if method == "min":
            return inter / np.minimum(area_a[:, None], area_b[None, :])
    raise ValueError(f"NMS method must be 'union' or 'min', got {method!r}")


def nms_keep(boxes, threshold, method="union", block=512):
    """Indices kept by the wheel's NMS on boxes already sorted by falling score: box j is
    dropped when some i < j (kept or not) overlaps it by more than ``threshold``.
    Computed in column blocks so that thousands of P-Net boxes stay cheap in memory."""
    n = len(boxes)
    drop = np.zeros(n, dtype=bool)
    for s in range(0, n, block):
        e = min(n, s + block)
        ov = iou_matrix(boxes[:e], boxes[s:e], method)
        earlier = np.arange(e)[:, None] < np.arange(s, e)[None, :]
        drop[s:e] = ((ov > threshold) & earlier).any(axis=0)
    return np.nonzero(~drop)[0]


def _sort_nms(rows, threshold, method):
    """Sort rows [x1, y1, x2, y2, score, ...] by falling score, then NMS."""
    if len(rows) == 0:
        return rows
    rows = rows[np.argsort(rows[:, 4])[::-1]]
    return rows[nms_keep(rows[:, :4], threshold, method)]


def square_boxes(rows):
    """Boxes grown to squares about their centres (the wheel's ``resize_to_square``)."""
    rows = rows.copy()
    w = rows[:, 2] - rows[:, 0]
    h = rows[:, 3] - rows[:, 1]
    side = np.maximum(w, h)
    rows[:, 0] += w * 0.5 - side * 0.5
    rows[:, 1] += h * 0.5 - side * 0.5
    rows[:, 2] = rows[:, 0] + side
    rows[:, 3] = rows[:, 1] + side
    return rows


def crop_and_resize(image, boxes, size):
    """Bilinear crops of ``image`` (H, W, C) float32 for ``boxes`` [x1, y1, x2, y2] (pixels),
    each ``size`` x ``size``, sampled as TensorFlow's ``crop_and_resize`` does for boxes
    given as ``[y1/H, x1/W, y2/H, x2/W]`` (the wheel's ``extract_patches``): sample i of a
    box at ``y1/H*(H-1) + i*(y2-y1)/H*(H-1)/(size-1)``, and 0 where a sample row or column
    falls outside the image.  Returns (N, size, size, C) float32."""
    h, w = image.shape[:2]
    n = len(boxes)
    if n == 0:
        return np.zeros((0, size, size, image.shape[2]), np.float32)
    b = boxes.astype(np.float32)
    i = np.arange(size, dtype=np.float32)
    step = 1.0 / (size - 1) if size > 1 else 0.0

    def coords(lo, hi, extent):
        lo_n = lo / np.float32(extent)
        hi_n = hi / np.float32(extent)
        if size > 1:
            c = lo_n[:, None] * (extent - 1) + i[None, :] * ((hi_n - lo_n)[:, None] * (extent - 1) * step)
        else:
            c = np.broadcast_to((0.5 * (lo_n + hi_n) * (extent - 1))[:, None], (n, 1))
        valid = (c >= 0) & (c <= extent - 1)
        c0 = np.floor(c)
        frac = (c - c0).astype(np.float32)
        i0 = np.clip(c0, 0, extent - 1).astype(np.int64)
        i1 = np.clip(np.ceil(c), 0, extent - 1).astype(np.int64)
        return i0, i1, frac, valid

    y0, y1, fy, vy = coords(b[:, 1], b[:, 3], h)
    x0, x1, fx, vx = coords(b[:, 0], b[:, 2], w)
    r0 = image[y0]  # (N, S, W, C)
    r1 = image[y1]
    idx = np.arange(n)[:, None, None]
    tl = r0[idx, np.arange(size)[None, :, None], x0[:, None, :]]
    tr = r0[idx, np.arange(size)[None, :, None], x1[:, None, :]]
    bl = r1[idx, np.arange(size)[None, :, None], x0[:, None, :]]
    br = r1[idx, np.arange(size)[None, :, None], x1[:, None, :]]
    fxx = fx[:, None, :, None]
    top = tl + (tr - tl) * fxx
    bot = bl + (br - bl) * fxx
    out = top + (bot - top) * fy[:, :, None, None]
    out *= (vy[:, :, None] & vx[:, None, :])[..., None]
    return out.astype(np.float32, copy=False)


def pack_levels(sizes, gutter=2):
    """Place pyramid levels ``[(h, w), ...]`` (largest first) on one canvas, shelf by shelf,
    at even offsets with ``gutter`` pixels between them.  Returns (offsets [(y, x)], (H, W))."""
    if not sizes:
        return [], (0, 0)
    even = lambda v: v + (v & 1)  # noqa: E731 - P-Net's stride 2 needs even offsets
    width = sizes[0][1] if len(sizes) == 1 else even(sizes[0][1] + gutter) + sizes[1][1]
    offsets, y, x, shelf_h = [], 0, 0, 0
    for h, w in sizes:
        if x > 0 and x + w > width:
            y, x, shelf_h = even(y + shelf_h + gutter), 0, 0
        offsets.append((y, x))
        x = even(x + w + gutter)
        shelf_h = max(shelf_h, h)
    return offsets, (y + shelf_h, width)


def _pnet_cells(h, w):
    """Output size of P-Net on an h x w input (conv 3, ceil pool 2/2, conv 3, conv 3)."""
    return max(0, -(-(h - 2) // 2) - 4), max(0, -(-(w - 2) // 2) - 4)


def _bucket(n):
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // _BUCKETS[-1]) * _BUCKETS[-1]


def normalise(img_rgb):
    """uint8 RGB -> float32 ``(x - 127.5) / 128`` (= ``PIXEL_SCALE``), MTCNN's input."""
    return (np.asarray(img_rgb, dtype=np.float32) - np.float32(PIXEL_MEAN)) * np.float32(PIXEL_SCALE)


def check_image(img, name="image"):
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"{name}: expected an HxWx3 RGB image, got shape {tuple(img.shape)}")
    return img[:, :, :3]


# --------------------------------------------------------------------------- detector

class MTCNN:
    """Three-stage MTCNN detector on MXNet.

    ``detect(img_rgb)`` -> ``(boxes (N, 4) [x1, y1, x2, y2], scores (N,), landmarks (N, 5, 2))``
    in pixel coordinates of the input, by falling score; landmarks are left eye, right eye,
    nose, left and right mouth corner (image left/right), the order of ``ARCFACE_TEMPLATE``.
    """

    def __init__(self, min_face_size=20, scale_factor=0.709, thresholds=(0.6, 0.7, 0.7),
                 nms_thresholds=(0.5, 0.7, 0.7, 0.7), ctx=None, hybridize=True, mosaic=False):
        import mxnet as mx

        if min_face_size < 12:
            raise InputError(f"MTCNN: min_face_size must be >= 12, got {min_face_size}")
        if not 0 < scale_factor < 1:
            raise InputError(f"MTCNN: scale_factor must be in (0, 1), got {scale_factor}")
        self.min_face_size = min_face_size
        self.scale_factor = scale_factor
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        self.ctx = ctx or mx.cpu()
        self.mosaic = mosaic
        self.pnet = load_net("pnet", self.ctx, hybridize)
        self.rnet = load_net("rnet", self.ctx, hybridize)
        self.onet = load_net("onet", self.ctx, hybridize)

    # -- stage 1
    def _pnet_maps(self, norm, levels):
        """P-Net (offsets (4, h, w), probability (h, w)) for every level ``(scale, (h, w))``."""
        import cv2
        import mxnet as mx

        imgs = [cv2.resize(norm, (w, h), interpolation=cv2.INTER_AREA) for _, (h, w) in levels]
        if not self.mosaic:
            out = []
            for im in imgs:
                reg, prob = self.pnet(mx.nd.array(im.transpose(2, 0, 1)[None], ctx=self.ctx))
                out.append((reg.asnumpy()[0], prob.asnumpy()[0, 1]))
            return out
        offsets, (ch, cw) = pack_levels([s for _, s in levels])
        canvas = np.zeros((3, ch, cw), np.float32)
        for (oy, ox), im in zip(offsets, imgs):
            canvas[:, oy:oy + im.shape[0], ox:ox + im.shape[1]] = im.transpose(2, 0, 1)
        reg, prob = self.pnet(mx.nd.array(canvas[None], ctx=self.ctx))
        reg, prob = reg.asnumpy()[0], prob.asnumpy()[0, 1]
        out = []
        for (oy, ox), (_, (h, w)) in zip(offsets, levels):
            ph, pw = _pnet_cells(h, w)
            cy, cx = oy // 2, ox // 2
            out.append((reg[:, cy:cy + ph, cx:cx + pw], prob[cy:cy + ph, cx:cx + pw]))
        return out

    def stage1(self, norm):
        """P-Net proposals [x1, y1, x2, y2, score] (squared), as the wheel's StagePNet."""
        h, w = norm.shape[:2]
        scales = scale_pyramid(w, h, self.min_face_size, self.scale_factor)
        # Level size: the wheel asks TF for shape * scale as int32 sizes (truncation).
        levels = [(s, (int(h * s), int(w * s))) for s in scales]
        levels = [(s, hw) for s, hw in levels if min(hw) >= 12]
        if not levels:
            return np.zeros((0, 5))
        per_level = []
        for (scale, _), (reg, prob) in zip(levels, self._pnet_maps(norm, levels)):
            ys, xs = np.nonzero(prob > self.thresholds[0])
            if len(ys) == 0:
                continue
            r = reg[:, ys, xs]
            x0, y0 = 2.0 * xs, 2.0 * ys
            rows = np.stack([x0 + r[0] * 12, y0 + r[1] * 12, x0 + 12 + r[2] * 12, y0 + 12 + r[3] * 12,
                             prob[ys, xs]], axis=1)
            rows[:, :4] /= scale
            per_level.append(_sort_nms(rows, self.nms_thresholds[0], "union"))
        if not per_level:
            return np.zeros((0, 5))
        rows = _sort_nms(np.concatenate(per_level), self.nms_thresholds[1], "union")
        return square_boxes(rows)

    def _run(self, net, norm, rows, size):
        import mxnet as mx

        n = len(rows)
        crops = crop_and_resize(norm, rows[:, :4], size).transpose(0, 3, 1, 2)
        nb = _bucket(n)
        if nb > n:
            crops = np.concatenate([crops, np.zeros((nb - n,) + crops.shape[1:], np.float32)])
        return [o.asnumpy()[:n] for o in net(mx.nd.array(crops, ctx=self.ctx))]

    @staticmethod
    def _refine(rows, offsets):
        rows = rows.copy()
        w = rows[:, 2] - rows[:, 0] + 1
        h = rows[:, 3] - rows[:, 1] + 1
        rows[:, :4] += offsets * np.stack([w, h, w, h], axis=1)
        return rows

    def stage2(self, norm, rows):
        """R-Net refinement (the wheel's StageRNet)."""
        if len(rows) == 0:
            return rows
        reg, prob = self._run(self.rnet, norm, rows, 24)
        rows = rows.copy()
        rows[:, 4] = prob[:, 1]
        rows = self._refine(rows, reg)
        rows = rows[rows[:, 4] > self.thresholds[1]]
        return square_boxes(_sort_nms(rows, self.nms_thresholds[2], "union"))

    def stage3(self, norm, rows):
        """O-Net boxes and landmarks (the wheel's StageONet): rows [x1..y2, score, 10 landmark
        numbers x1..x5, y1..y5]."""
        if len(rows) == 0:
            return np.zeros((0, 15))
        reg, lmk, prob = self._run(self.onet, norm, rows, 48)
        w = rows[:, 2:3] - rows[:, 0:1] + 1
        h = rows[:, 3:4] - rows[:, 1:2] + 1
        lx = w * lmk[:, 0:5] + rows[:, 0:1] - 1
        ly = h * lmk[:, 5:10] + rows[:, 1:2] - 1
        rows = rows.copy()
        rows[:, 4] = prob[:, 1]
        rows = np.concatenate([self._refine(rows, reg), lx, ly], axis=1)
        rows = rows[rows[:, 4] > self.thresholds[2]]
        return _sort_nms(rows, self.nms_thresholds[3], "min")

    def detect(self, img_rgb):
        """Faces of one RGB image (uint8 HxWx3): ``(boxes (N, 4), scores (N,), landmarks (N, 5, 2))``."""
        img = check_image(img_rgb)
        norm = normalise(img)
        rows = self.stage3(norm, self.stage2(norm, self.stage1(norm)))
        h, w = img.shape[:2]
        boxes = rows[:, :4].copy()
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h - 1)
        landmarks = np.stack([rows[:, 5:10], rows[:, 10:15]], axis=2)
        return boxes.astype(np.float32), rows[:, 4].astype(np.float32), landmarks.astype(np.float32)


# --------------------------------------------------------------------------- detect + align

SELECT = ("largest", "central", "single")

_default = {}


def get_detector(**kw):
    """A shared :class:`MTCNN` per option set (loading and hybridizing costs ~1 s)."""
    key = tuple(sorted(kw.items()))
    if key not in _default:
        _default[key] = MTCNN(**kw)
    return _default[key]


def pick_face(boxes, image_shape, select="largest"):
    """Index of the face to keep: ``largest`` box area, or ``central`` (box centre nearest
    the image centre); ``single`` refuses several faces (returns None)."""
    if select not in SELECT:
        raise InputError(f"face selection must be one of {', '.join(SELECT)}, got {select!r}")
    if len(boxes) == 0 or (select == "single" and len(boxes) > 1):
        return None
    if select == "central":
        h, w = image_shape[:2]
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2]) - 0.5 * (w - 1)
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3]) - 0.5 * (h - 1)
        return int(np.argmin(cx * cx + cy * cy))
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


def detect_and_align(img_rgb, detector=None, select="largest", image_size=112):
    """Detect faces in an RGB photo, pick one, align it to the ArcFace template.

    Returns ``(aligned uint8 (image_size, image_size, 3) RGB or None, info)``; ``info`` has
    ``num_faces``, ``status`` ('ok', 'no face', 'several faces'), and for the picked face
    ``bbox`` [x1, y1, x2, y2], ``score`` and ``landmarks`` (5, 2) in the photo's pixels, as
    InsightFace's alignment feeds ``norm_crop``."""
    from shrinkteanet.data.align import norm_crop

    img = check_image(img_rgb)
    det = detector or get_detector()
    boxes, scores, landmarks = det.detect(img)
    info = {"num_faces": int(len(boxes)), "status": "ok", "bbox": None, "score": None, "landmarks": None}
    k = pick_face(boxes, img.shape, select)
    if k is None:
        info["status"] = "no face" if len(boxes) == 0 else "several faces"
        return None, info
    info.update(bbox=boxes[k].tolist(), score=float(scores[k]), landmarks=landmarks[k].tolist())
    aligned = norm_crop(np.ascontiguousarray(img), landmarks[k], image_size=image_size)
    return aligned, info
