"""The deploy graph of an InsightFace-layout checkpoint, from which ONNX, MKLDNN and INT8
models are all built (``fc1`` output, raw RGB 0-255 input, normalisation inside):

* every ``FullyConnected`` that flattens gets an explicit ``Flatten`` in front and
  ``flatten="True"`` written out.  MXNet's default is ``flatten=True`` but
  ``mx.onnx`` reads a missing attribute as false and emits a rank-keeping Gemm that
  onnxruntime rejects; and on MXNet 1.9.1 CPU the MKLDNN fully-connected fed by a
  4-D MKLDNN tensor (MobileFaceNet's GDC head) leaves ``fc1`` in MKLDNN layout so
  that the *second* ``Module.forward`` fails with "We can't generate TBlob for
  MKLDNN data" (on some CPUs: not on every one the tests ran on).  An explicit
  Flatten reorders to the default layout first; the arithmetic is unchanged (the
  tests run each exported model twice).
* BatchNorm with ``fix_gamma`` (InsightFace's ``fc1``: ``fix_gamma=True``, and
  MXNet's default when the attribute is absent) computes with gamma = 1 whatever
  the stored value; ``mx.onnx`` ignores the attribute, so gamma is set to 1 in the
  exported parameters, as InsightFace's own ONNX conversion does.
* for the MKLDNN and INT8 models, PReLU is replaced by MKLDNN-native ops
  (``prelu_as_mkldnn_ops``: MXNet 1.9.1 runs PReLU outside MKLDNN, several times
  slower than the rest of the network).  The ONNX export keeps PReLU.
"""
import json

import numpy as np

from shrinkteanet.core.errors import InputError

_TRUE = ("True", "true", "1")


def graph_json(sym):
    """The MXNet JSON graph of ``sym`` as a dict (``nodes``, ``arg_nodes``, ``heads``)."""
    return json.loads(sym.tojson())


def deploy_symbol(sym):
    """The deploy graph of ``sym``: explicit ``Flatten`` before each flattening
    ``FullyConnected`` (see the module docstring for the two bugs this avoids).
    Parameter names and values are those of ``sym``."""
    from shrinkteanet.model.rewrites import insert_flatten

    return insert_flatten(sym)


def deploy_params(sym, arg_params, aux_params):
    """Parameters ``sym`` needs, float32, with gamma = 1 for ``fix_gamma`` BatchNorm
    (what MXNet computes with; InsightFace's ``fc1`` BatchNorm has ``fix_gamma=True``)."""
    import mxnet as mx

    need_arg = [n for n in sym.list_arguments() if n != "data"]
    need_aux = sym.list_auxiliary_states()
    missing = [n for n in need_arg if n not in arg_params] + [n for n in need_aux if n not in aux_params]
    if missing:
        raise InputError(f"model parameters lack {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    arg = {n: arg_params[n].astype("float32") for n in need_arg}
    aux = {n: aux_params[n].astype("float32") for n in need_aux}
    for node in graph_json(sym)["nodes"]:
        if node["op"] == "BatchNorm" and node.get("attrs", {}).get("fix_gamma", "True") in _TRUE:
            gname = node["name"] + "_gamma"
            if gname in arg:
                arg[gname] = mx.nd.ones(arg[gname].shape, dtype="float32")
    return arg, aux


class _GraphBuilder:
    """Nodes of an MXNet JSON graph appended in order, with names kept unique."""

    def __init__(self, names):
        self.nodes = []
        self.names = set(names)

    def add(self, node):
        """Append ``node``; returns its index."""
        self.nodes.append(node)
        return len(self.nodes) - 1

    def fresh(self, name):
        """``name``, with ``_`` appended until no node or parameter has it."""
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name


def prelu_as_mkldnn_ops(sym, arg_params):
    """``sym`` with every per-channel PReLU (``LeakyReLU(act_type='prelu')``, He et
    al. 2015 eq. 1: ``f(x) = max(0, x) + a * min(0, x)``) rewritten as
    ``f(x) = a * x + (1 - a) * max(0, x)``: a ReLU ``Activation`` and two depthwise
    1x1 convolutions with weights ``a`` and ``1 - a``, added.

    MXNet 1.9.1 has no MKLDNN kernel for PReLU and its conv fusion takes only
    relu/leaky/gelu, so each of MobileFaceNet's 33 PReLUs reorders the blocked
    MKLDNN tensor to NCHW, runs a single-threaded broadcast kernel and reorders
    back: measured here 4-7x the time of the whole network with ReLU in their
    place.  The rewritten ops are all MKLDNN-native (the add fuses into the second
    convolution as a sum post-op) and quantise like any convolution.  The sum is
    the PReLU's original name, so ``<name>_output`` still names the activation.
    Arithmetic is unchanged up to float rounding; the ONNX export keeps PReLU.

    Parameters
    ----------
    sym : mx.sym.Symbol
        A deploy graph.
    arg_params : dict
        Its argument parameters (the PReLU slopes among them).

    Returns
    -------
    (mx.sym.Symbol, dict)
        The rewritten graph and the parameters it needs.
    """
    g = graph_json(sym)
    arg = dict(arg_params)
    build = _GraphBuilder(n["name"] for n in g["nodes"])
    remap = {}  # old node index -> (new node index, output index or None to keep the input's)
    for i, node in enumerate(g["nodes"]):
        node = dict(node)
        node["inputs"] = [[remap[a][0], b if remap[a][1] is None else remap[a][1], c] for a, b, c in node["inputs"]]
        if node["op"] == "LeakyReLU" and node.get("attrs", {}).get("act_type") == "prelu":
            remap[i] = (_add_prelu_as_convs(build, node, arg), 0)
        else:
            remap[i] = (build.add(node), None)
    new = _pruned_symbol(build.nodes, remap, g)
    need = set(new.list_arguments())
    return new, {k: v for k, v in arg.items() if k in need}


def _add_prelu_as_convs(build, node, arg):
    """Append ``relu``, the two depthwise convolutions and their sum for one PReLU
    ``node`` (inputs already remapped); the two weights go into ``arg``.  Returns the
    index of the sum, which carries the PReLU's name."""
    import mxnet as mx

    x, gin = node["inputs"][0], node["inputs"][1]
    slope = build.nodes[gin[0]]
    gname = slope["name"]
    if slope["op"] != "null" or gname not in arg:
        raise InputError(f"PReLU {node['name']}: slope {gname} is not a stored parameter")
    a = arg[gname].asnumpy().astype(np.float32).reshape(-1)
    c = int(a.size)
    name = node["name"]
    wa, wb = build.fresh(name + "_lin_weight"), build.fresh(name + "_pos_weight")
    arg[wa] = mx.nd.array(a.reshape(c, 1, 1, 1))
    arg[wb] = mx.nd.array((1.0 - a).reshape(c, 1, 1, 1))
    dw = {"kernel": "(1, 1)", "num_filter": str(c), "num_group": str(c), "no_bias": "True"}
    relu = build.add({"op": "Activation", "name": build.fresh(name + "_relu"), "attrs": {"act_type": "relu"},
                      "inputs": [x]})
    vb = build.add({"op": "null", "name": wb, "inputs": []})
    pos = build.add({"op": "Convolution", "name": build.fresh(name + "_pos"), "attrs": dict(dw),
                     "inputs": [[relu, 0, 0], [vb, 0, 0]]})
    va = build.add({"op": "null", "name": wa, "inputs": []})
    neg = build.add({"op": "Convolution", "name": build.fresh(name + "_lin"), "attrs": dict(dw),
                     "inputs": [x, [va, 0, 0]]})
    return build.add({"op": "elemwise_add", "name": name, "inputs": [[neg, 0, 0], [pos, 0, 0]]})


def _pruned_symbol(nodes, remap, graph):
    """The symbol of ``nodes`` without the parameter nodes nothing uses any more (the
    PReLU slopes), with ``graph``'s heads remapped."""
    import mxnet as mx

    used = {a for n in nodes for a, _, _ in n["inputs"]}
    keep = [j for j, n in enumerate(nodes) if n["op"] != "null" or j in used or n["name"] == "data"]
    idx = {j: k for k, j in enumerate(keep)}
    final = []
    for j in keep:
        n = dict(nodes[j])
        n["inputs"] = [[idx[a], b, c] for a, b, c in n["inputs"]]
        final.append(n)
    heads = [[idx[remap[a][0]], remap[a][1] if remap[a][1] is not None else b, c] for a, b, c in graph["heads"]]
    return mx.sym.load_json(json.dumps({"nodes": final, "arg_nodes": [k for k, n in enumerate(final) if n["op"] == "null"],
                                        "heads": heads, "attrs": graph.get("attrs", {})}))
