"""Face-embedding networks as MXNet Symbols, and their split into stages.

``get_symbol(network, emb_size=512, **opts)`` returns the embedding Symbol ``fc1``
(input Variable ``data``: NCHW raw RGB 0-255, normalised inside as InsightFace
does).  ``get_stages`` returns the same network as a ``StageSplit``: the four
stage outputs (ShrinkTeaNet's intermediate features F_i, Sec. 3.3) and, for each
stage i, the rest of the network [T_{i+1} o ... o T_n] as a Symbol of a fresh
Variable, with exactly the parameter names of the full network, so a teacher's
tail can share the teacher's weights by name.

Networks: ``r18 r34 r50 r90 r100`` (LResNet-E-IR, ``fresnet``), ``mfn``/``mfnr``
(``fmobilefacenet``), ``mv1`` (``fmobilenet``), ``mv2`` (``fmobilenetv2``).
Options (tiny test networks, other resolutions):
``image_size`` (sets the GDC kernel: 7 at 112, 4 at 56),
fresnet ``units=(4 ints)``, ``filters=(5 ints)``;
mfn/mfnr ``blocks=(4)``, ``filters=(5)``, ``groups=(6)``;
mv1 ``multiplier``, ``blocks=(4)``; mv2 ``multiplier``, ``blocks=(7)``, ``last_channels``;
``dtype='float16'`` runs the four stages in float16 (Cast after the
normalisation, back to float32 before the output unit; taps are cast to float32).
"""
import json

import mxnet as mx
import numpy as np

from . import common, fmobilefacenet, fmobilenet, fmobilenetv2, fresnet

NETWORKS = ("r18", "r34", "r50", "r90", "r100", "mfn", "mfnr", "mv1", "mv2")
#: networks whose argument/aux names and shapes are InsightFace's (CONTRACTS.md)
INSIGHTFACE_COMPATIBLE = ("r18", "r34", "r50", "r90", "r100", "mfn")
TAIL_INPUTS = ("stage1_feature", "stage2_feature", "stage3_feature", "stage4_feature")


def _pieces(network, emb_size, opts):
    opts = dict(opts)
    opts.pop("dtype", None)
    try:
        return _build(network, emb_size, opts)
    except TypeError as e:
        raise ValueError(f"network {network!r}: unsupported option ({e})") from None


def _build(network, emb_size, opts):
    if network in ("r18", "r34", "r50", "r90", "r100"):
        return fresnet.build(int(network[1:]), emb_size=emb_size, **opts), fresnet.WITH_ID
    if network in ("mfn", "mfnr"):
        return fmobilefacenet.build(network, emb_size=emb_size, **opts), fmobilefacenet.WITH_ID
    if network == "mv1":
        return fmobilenet.build(emb_size=emb_size, **opts), fmobilenet.WITH_ID
    if network == "mv2":
        return fmobilenetv2.build(emb_size=emb_size, **opts), fmobilenetv2.WITH_ID
    raise ValueError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")


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


# ---------------------------------------------------------------- statistics
def _infer(sym, image_size):
    shape = (1, 3, int(image_size), int(image_size))
    arg_shapes, _, aux_shapes = sym.infer_shape(data=shape)
    args = dict(zip(sym.list_arguments(), arg_shapes))
    aux = dict(zip(sym.list_auxiliary_states(), aux_shapes))
    return args, aux


def param_shapes(sym, image_size=112):
    """(arg name -> shape, aux name -> shape) of ``sym`` for one square input."""
    return _infer(sym, image_size)


def is_classifier_param(name):
    """fc7 is the margin head's class-centre matrix, not part of the embedding network."""
    return name.startswith("fc7")


def count_params(sym, image_size=112, exclude=("data", "softmax_label")):
    """Number of trainable numbers in ``sym`` under InsightFace's convention: every
    argument except the inputs (conv/FC weights and biases, BatchNorm gamma and
    beta - also those with ``fix_gamma`` -, PReLU slopes), auxiliary states
    (BatchNorm running mean/var) excluded.  Returns (embedding part, classifier part)
    where the classifier part counts arguments named ``fc7*``."""
    args, _ = _infer(sym, image_size)
    emb = cls = 0
    for name, shape in args.items():
        if name in exclude:
            continue
        n = int(np.prod(shape))
        if is_classifier_param(name):
            cls += n
        else:
            emb += n
    return emb, cls


def count_flops(sym, image_size=112):
    """Multiply-adds of the Convolution and FullyConnected layers of ``sym`` for one
    ``image_size`` x ``image_size`` image (the "FLOPs" of MobileFaceNet's tables).

    Convolution: output elements x (input channels / groups) x kh x kw;
    FullyConnected: inputs x outputs.  Shapes come from MXNet's shape inference
    over the symbol's JSON graph."""
    shape = (1, 3, int(image_size), int(image_size))
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=shape)
    out = dict(zip(internals.list_outputs(), out_shapes))
    args, _ = _infer(sym, image_size)
    nodes = json.loads(sym.tojson())["nodes"]
    total = 0
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        weight = nodes[node["inputs"][1][0]]["name"]
        wshape = args[weight]
        if node["op"] == "Convolution":
            total += int(np.prod(out[node["name"] + "_output"][1:])) * int(np.prod(wshape[1:]))
        else:
            total += int(wshape[0]) * int(wshape[1])
    return total


__all__ = ["NETWORKS", "INSIGHTFACE_COMPATIBLE", "TAIL_INPUTS", "StageSplit", "get_stages", "get_symbol",
           "param_shapes", "count_params", "count_flops", "is_classifier_param"]
