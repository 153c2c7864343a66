"""Batched embedding with flip fusion, for every evaluation protocol.

InsightFace's evaluation scripts (verification ``test()``, ``gen_megaface.py``,
IJB ``Embedding.get``) feed raw RGB 0-255 NCHW batches to the ``fc1`` output and add
the embedding of the horizontally mirrored image; the network normalises inside.
Here the ``fc1`` symbol runs as a hybridized Gluon ``SymbolBlock`` (static
allocation, MKLDNN graph partitioning where the build has it) with one fixed batch
shape (the last batch padded), which is several times faster on CPU than
``mx.mod.Module`` and avoids MXNet 1.9.1's "We can't generate TBlob for MKLDNN data"
failure that a second ``Module.forward`` on a BatchNorm(fix_gamma) ``fc1`` output can
hit.  If a forward fails anyway, the block is rebuilt without MKLDNN partitioning and
the batch retried once.
"""
import os

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


def _cut_fc1(sym):
    """``sym`` cut at ``fc1_output`` (``model.checkpoint.cut_at_embedding``); a symbol without
    that node (a bare embedding graph handed in) as it is."""
    from shrinkteanet.model.checkpoint import EMBEDDING_OUTPUT, cut_at_embedding

    if EMBEDDING_OUTPUT not in sym.get_internals().list_outputs():
        return sym
    return cut_at_embedding(sym)


def load_model(model):
    """``(prefix, epoch)`` or ``"P,E"`` or ``(sym, arg_params, aux_params)`` -> ``(fc1 sym, arg, aux)``."""
    if isinstance(model, str):
        from shrinkteanet.core.utils import parse_model_arg

        model = parse_model_arg(model)
    if len(model) == 3:
        sym, arg, aux = model
        return _cut_fc1(sym), dict(arg), dict(aux)
    prefix, epoch = model
    sym_file, par_file = f"{prefix}-symbol.json", "%s-%04d.params" % (prefix, int(epoch))
    for f in (sym_file, par_file):
        if not os.path.isfile(f):
            raise InputError(f"{f}: checkpoint file not found (--model {prefix},{epoch})")
    from shrinkteanet.model.checkpoint import load_checkpoint

    sym, arg, aux = load_checkpoint(prefix, int(epoch))  # cut at fc1 already
    return sym, dict(arg), dict(aux)


def quiet_infer_shape(sym, **shapes):
    """``sym.infer_shape(**shapes)`` without MXNet 1.9.1's dump: on a failure its Python side
    prints "infer_shape error. Arguments:" and every shape given to stdout (98 lines for a
    MobileFaceNet with its parameters) before it raises; the caller turns the error into one
    line."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return sym.infer_shape(**shapes)


def input_size_fits(sym, arg_params, size):
    """True when every parameter shape of ``sym`` at input ``size`` x ``size``
    equals the stored one (the FC after the last feature map pins the size, up to
    the rounding of the strided convolutions)."""
    shapes = {k: tuple(v.shape) for k, v in arg_params.items()}
    try:
        a, _, _ = quiet_infer_shape(sym, data=(1, 3, int(size), int(size)))
    except Exception:  # too small for the strides: mxnet raises MXNetError
        return False
    return all(shapes.get(n, tuple(sh)) == tuple(sh) for n, sh in zip(sym.list_arguments(), a) if n != "data")


#: Sizes tried first when guessing a checkpoint's input side (face crops in use).
_COMMON_SIZES = (112, 96, 128, 64, 56, 48, 32, 16, 24, 40, 80, 160, 224)


def model_input_size(sym, arg_params, hint=None):
    """Square input side for ``sym`` with these weights: ``hint`` when it fits,
    else the first fitting common face-crop size, else the smallest fitting size."""
    for s in ([hint] if hint else []) + list(_COMMON_SIZES) + list(range(8, 513)):
        if input_size_fits(sym, arg_params, s):
            return int(s)
    raise InputError("model parameters fit no square input size from 8 to 512 (symbol and params do not match)")


def require_input_size(sym, arg_params, size, what="input"):
    """Raise a one-line ``InputError`` naming both sizes unless ``size`` fits the model."""
    if not input_size_fits(sym, arg_params, size):
        expected = model_input_size(sym, arg_params)
        raise InputError(f"model expects {expected}x{expected} input but {what} is {size}x{size}")
    return int(size)


def check_input_size(model_size, image_size, what="input"):
    """Raise a one-line ``InputError`` naming both sizes when they differ."""
    if model_size is not None and image_size is not None and int(model_size) != int(image_size):
        raise InputError(
            f"model expects {model_size}x{model_size} input but {what} is {image_size}x{image_size}"
        )


def require_finite(emb, name, *, model=None, batch=None):
    """Stop (one ``InputError``) when an embedding batch holds NaN or inf: the one check of
    every command that answers from embeddings (``embed``, ``compare``, ``eval *``,
    ``cache-teacher`` through ``Embedder``; ``export`` through ``deploy.runner.Runner``), run on
    the first batch and every batch after, so that no NaN becomes a similarity, a ``.npy`` row
    or an sklearn traceback.  ``model = (sym, arg, aux)`` and ``batch`` (the NCHW input) let
    ``first_bad_layer`` name where the numbers went wrong."""
    emb = np.asarray(emb)
    finite = np.isfinite(emb)
    if finite.all():
        return
    rows = int((~finite.all(axis=tuple(range(1, emb.ndim)))).sum()) if emb.ndim > 1 else int((~finite).sum())
    where = first_bad_layer(*model, batch=batch) if model is not None else None
    raise InputError(f"{name}: non-finite embeddings (NaN or inf in {rows} of {len(emb)} rows of a batch)"
                     + (f"; first bad layer: {where}" if where else "") + "; its answers would not be numbers")


def _layer_params(sym):
    """``[(layer, [parameter names])]`` of ``sym`` in graph (topological) order."""
    import json

    nodes = json.loads(sym.tojson())["nodes"]
    out = []
    for node in nodes:
        if node["op"] == "null":
            continue
        names = [nodes[i[0]]["name"] for i in node["inputs"] if nodes[i[0]]["op"] == "null"]
        out.append((node["name"], [n for n in names if n != "data"]))
    return out


def _bad_parameter(name, value):
    """Why one parameter makes the forward non-finite (None when it does not)."""
    v = value.asnumpy()
    if not np.isfinite(v).all():
        return f"parameter {name} holds {int((~np.isfinite(v)).sum())} NaN/inf value(s)"
    if name.endswith("moving_var") and (v < 0).any():
        return f"BatchNorm running variance {name} is negative (min {float(v.min()):.3g}): sqrt of a negative"
    return None


def first_bad_layer(sym, arg, aux, *, batch=None):
    """The first layer of ``sym`` (graph order) that makes its output non-finite, as words, or
    None: first a scan of the parameters it reads (NaN/inf, negative BatchNorm variance), then,
    when they are clean and ``batch`` is given, one forward of every internal output on its first
    image (an overflow)."""
    params = {**arg, **aux}
    for layer, names in _layer_params(sym):
        for n in names:
            why = _bad_parameter(n, params[n]) if n in params else None
            if why:
                return f"{layer} ({why})"
    if batch is None or not len(batch):
        return None
    return _first_nonfinite_output(sym, params, np.asarray(batch[:1], np.float32))


def _first_nonfinite_output(sym, params, x):
    """Name of the first internal output of ``sym`` that is non-finite on ``x`` (one image)."""
    import mxnet as mx

    from mxnet import gluon

    internals = sym.get_internals()
    names = [n for n in internals.list_outputs() if n.endswith("_output")]  # layers, not the variables
    try:
        # a Gluon block (a plain simple_bind of such a group fails in MXNet 1.9.1: in_arg_ctx_map)
        net = gluon.SymbolBlock(mx.sym.Group([internals[n] for n in names]), [mx.sym.var("data", dtype="float32")])
        for k, p in net.collect_params().items():
            p._load_init(params[k], mx.cpu())
        outs = net(mx.nd.array(x))
    except Exception:  # noqa: BLE001 -- only a diagnostic: the non-finite error is raised either way
        return None
    for name, out in zip(names, outs):
        if out.dtype in (np.float16, np.float32, np.float64) and not np.isfinite(out.asnumpy()).all():
            return f"{name} (first non-finite output on the batch's first image)"
    return None


def model_name(model):
    """How messages name a model: ``--model P,E`` for a checkpoint, else ``the model``."""
    if isinstance(model, str):
        return f"--model {model}"
    if len(model) == 2:
        return f"--model {model[0]},{model[1]}"
    return "the model"


class Embedder:
    """``Embedder(model, ctx=None, batch_size=64, image_size=None, mkldnn=True, what='--image-size',
    name=None)``; ``embed(images NHWC uint8 RGB, flip=True) -> float32 (N, D)`` = emb(img) +
    emb(mirror), not normalised; ``embed_parts(images)`` -> (emb, emb_mirror) for XNorm.

    ``image_size`` None: the side the weights fit (``model_input_size``, as ``embed`` and
    ``export`` detect it); given, it must fit (``what`` names where it came from in the one-line
    error).  Every batch's embeddings must be finite (``require_finite``; ``name`` names the
    model in that error, default ``model_name(model)``)."""

    def __init__(self, model, ctx=None, batch_size=64, image_size=None, mkldnn=True, *, what="--image-size",
                 name=None):
        import mxnet as mx

        self.sym, self.arg, self.aux = load_model(model)
        self.name = name or model_name(model)
        self.ctx = ctx if ctx is not None else mx.cpu()
        self.batch_size = int(batch_size)
        if image_size is None:
            image_size = model_input_size(self.sym, self.arg)
        self.image_size = int(image_size)
        self.mkldnn = bool(mkldnn) and mx.runtime.Features().is_enabled("MKLDNN") and self.ctx.device_type == "cpu"
        self._check_input_size(what if what != "--image-size" else f"--image-size {self.image_size}")
        self._build(self.mkldnn)

    def _check_input_size(self, what):
        """The model must take ``image_size`` x ``image_size`` inputs (its E/GDC head fixes the
        size it was trained at); a mismatch is one ``InputError`` naming ``what`` (the option or
        the data the size came from) and the size the weights fit, without MXNet's shape dump."""
        import mxnet as mx

        s = self.image_size
        shapes = {k: v.shape for k, v in list(self.arg.items()) + list(self.aux.items())}
        try:
            quiet_infer_shape(self.sym, data=(1, 3, s, s), **shapes)
        except mx.base.MXNetError:
            try:
                fits = f"{model_input_size(self.sym, self.arg)}x{model_input_size(self.sym, self.arg)}"
            except InputError:
                fits = "no square"
            hint = "give the size it was trained at" if what.startswith("--image-size") else \
                "the faces must be the size it was trained at"
            raise InputError(f"{what}: {self.name} takes {fits} faces, not {s}x{s}; {hint}") from None

    def _build(self, mkldnn):
        import mxnet as mx
        from mxnet import gluon

        inputs = [n for n in self.sym.list_arguments() if n not in self.arg]
        if inputs != ["data"]:
            raise InputError(f"model: expected one free input 'data', found {inputs} (parameters missing?)")
        net = gluon.SymbolBlock(self.sym, [mx.sym.var("data", dtype="float32")])
        missing = []
        for name, p in net.collect_params().items():
            value = self.arg.get(name, self.aux.get(name))
            if value is None:
                missing.append(name)
                continue
            p._load_init(value, self.ctx)
        if missing:
            raise InputError(f"model: parameters missing from the checkpoint: {', '.join(missing[:5])}")
        kwargs = {"static_alloc": True, "static_shape": True}
        if mkldnn:
            kwargs["backend"] = "MKLDNN"
        net.hybridize(**kwargs)
        self.net = net
        self.mkldnn_active = mkldnn

    def _forward(self, batch):
        import mxnet as mx

        x = mx.nd.array(batch, ctx=self.ctx, dtype="float32")
        try:
            return self.net(x).asnumpy()
        except mx.base.MXNetError as e:
            if not self.mkldnn_active:
                raise
            log.warning("MKLDNN forward failed (%s); rebuilding without MKLDNN partitioning", str(e).splitlines()[0])
            self._build(False)
            return self.net(mx.nd.array(batch, ctx=self.ctx, dtype="float32")).asnumpy()

    def _prepare(self, images):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"images must be NHWC RGB, got shape {images.shape}")
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise InputError(f"images must be {self.image_size}x{self.image_size}, got {images.shape[1]}x{images.shape[2]}")
        return images

    def _run(self, nchw):
        n = nchw.shape[0]
        bs = self.batch_size
        out = None
        for a in range(0, n, bs):
            b = min(a + bs, n)
            batch = nchw[a:b]
            if b - a < bs:  # one static shape: pad the last batch
                pad = np.zeros((bs - (b - a),) + batch.shape[1:], batch.dtype)
                batch = np.concatenate([batch, pad])
            y = self._forward(batch)[: b - a]
            require_finite(y, self.name, model=(self.sym, self.arg, self.aux), batch=batch[: b - a])
            if out is None:
                out = np.empty((n, y.shape[1]), np.float32)
            out[a:b] = y
        if out is None:
            out = np.zeros((0, 0), np.float32)
        return out

    def embed_parts(self, images):
        """Raw ``fc1`` outputs of the images and of their mirrors: ``(emb, emb_flip)``."""
        images = self._prepare(images)
        nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
        emb = self._run(nchw)
        emb_flip = self._run(np.ascontiguousarray(nchw[:, :, :, ::-1]))
        return emb, emb_flip

    def embed(self, images, flip=True):
        """Flip-fused embeddings ``emb(img) + emb(mirror)`` (not normalised); ``flip=False``: ``emb(img)``."""
        if flip:
            emb, emb_flip = self.embed_parts(images)
            return emb + emb_flip
        images = self._prepare(images)
        return self._run(np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32))


def load_images(paths, image_size=IMAGE_SIZE, what="image"):
    """Decode aligned crops; resize to image_size when needed.  Returns (array NHWC, missing paths)."""
    import cv2

    from shrinkteanet.data.images import read_image_or_none

    out = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
    missing = []
    for i, p in enumerate(paths):
        img = read_image_or_none(p)
        if img is None:
            missing.append(p)
            continue
        if img.shape[:2] != (image_size, image_size):
            img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
        out[i] = img
    return out, missing
