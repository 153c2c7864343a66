"""Parameter and multiply-add counts of a network Symbol, by InsightFace's conventions."""
import json

import numpy as np


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
    return sum(layer_macs(sym, data=(1, 3, int(image_size), int(image_size))).values())


def layer_macs(sym, **input_shapes):
    """``{layer name: multiply-adds}`` of every Convolution and FullyConnected layer of ``sym``
    for the given input shapes (``data=(1, 3, 112, 112)``, or a stage tail's
    ``stage1_feature=(1, C, H, W)``), per the batch of those shapes; as ``count_flops``."""
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(**input_shapes)
    out = dict(zip(internals.list_outputs(), out_shapes))
    args = dict(zip(internals.list_arguments(), arg_shapes))
    nodes = json.loads(sym.tojson())["nodes"]
    macs = {}
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        wshape = args[nodes[node["inputs"][1][0]]["name"]]
        if node["op"] == "Convolution":
            macs[node["name"]] = int(np.prod(out[node["name"] + "_output"])) * int(np.prod(wshape[1:]))
        else:
            macs[node["name"]] = int(np.prod(out[node["name"] + "_output"])) * int(wshape[1])
    return macs
