"""``get_stages`` / ``get_symbol``: a registered network built as MXNet Symbols and cut at
its four stage boundaries (ShrinkTeaNet's intermediate features F_i, Sec. 3.3).  The
network options are listed in the package docstring."""
import mxnet as mx
import numpy as np

from . import common, registry

TAIL_INPUTS = ("stage1_feature", "stage2_feature", "stage3_feature", "stage4_feature")


def _pieces(network, emb_size, opts):
    """The registry's builder for ``network``, ``dtype`` left to ``get_stages``."""
    spec = registry.get_spec(network)
    opts = dict(opts)
    opts.pop("dtype", None)
    try:
        return spec.build(emb_size, opts)
    except TypeError as e:
        raise ValueError(f"network {network!r}: unsupported option ({e})") from None


class StageSplit:
    """A network cut at its four stage boundaries.

    ``full``: the ``fc1`` Symbol of ``data``; ``taps``: the 4 stage outputs inside
    ``full`` (float32); ``tails[i]``: every block after stage i+1 up to ``fc1``,
    applied to ``mx.sym.Variable(tail_inputs[i])`` (``tails[3]`` is the output unit
    alone); ``tap_outputs``: the output names of the taps in ``full.get_internals()``.
    """

    def __init__(self, network, emb_size, opts, full, taps, tails):
        self.network = network
        self.emb_size = emb_size
        self.opts = dict(opts)
        self.full = full
        self.taps = taps
        self.tails = tails
        self.tail_inputs = list(TAIL_INPUTS)
        self.tap_outputs = [t.list_outputs()[0] for t in taps]

    def stage_shapes(self, image_size=112):
        """(C, H, W) of the four stage outputs for a ``image_size`` square input."""
        shapes = []
        for tap in self.taps:
            _, out, _ = tap.infer_shape(data=(1, 3, image_size, image_size))
            shapes.append(tuple(int(v) for v in out[0][1:]))
        return shapes

    def __repr__(self):
        return f"StageSplit({self.network!r}, emb_size={self.emb_size}, tails={self.tail_inputs})"


def get_stages(network, emb_size=512, **opts):
    """Build ``network`` as a ``StageSplit`` (see the class).  Options: module docstring."""
    fp16 = np.dtype(opts.get("dtype", "float32")) == np.float16
    pieces, with_id = _pieces(network, emb_size, opts)

    body = common.normalize(mx.sym.Variable("data"), with_id=with_id)
    if fp16:
        body = mx.sym.Cast(body, dtype="float16", name="data_fp16")
    taps = []
    for i, stage in enumerate(pieces[:4]):
        body = stage(body)
        taps.append(mx.sym.Cast(body, dtype="float32", name=f"stage{i + 1}_fp32") if fp16 else body)
    full = pieces[4](taps[3] if fp16 else body)

    tails = []
    for i in range(4):
        body = mx.sym.Variable(TAIL_INPUTS[i])
        if fp16 and i < 3:
            body = mx.sym.Cast(body, dtype="float16", name=f"tail{i + 1}_fp16")
        for stage in pieces[i + 1:4]:
            body = stage(body)
        if fp16 and i < 3:
            body = mx.sym.Cast(body, dtype="float32", name=f"tail{i + 1}_fp32")
        tails.append(pieces[4](body))
    return StageSplit(network, emb_size, opts, full, taps, tails)


def get_symbol(network, emb_size=512, **opts):
    """The embedding Symbol ``fc1`` of ``network`` (CONTRACTS.md)."""
    return get_stages(network, emb_size, **opts).full
