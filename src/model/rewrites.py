"""Graph rewrites of MXNet Symbols, node by node (``rewrite_graph``): Flatten before a flattening FC
(``insert_flatten``, ``mkldnn_safe``: MXNet 1.9.1's MKLDNN "can't generate TBlob" bug, ONNX Gemm), frozen
graphs (``freeze_symbol``: global BatchNorm statistics, no Dropout), PReLU as relu + depthwise conv
(``prelu_as_depthwise``, exact) and AMP's float16 casts around it (``amp_safe_prelu``, ``count_amp_casts``).
Symbols in, Symbols out: no Gluon block, no checkpoint file.
"""
import json

import mxnet as mx


def rewrite_graph(sym, visit):
    """Rebuild ``sym``'s graph node by node, in order.

    ``visit(node, new_nodes)`` sees each node with its inputs already pointing into
    ``new_nodes``; it may append nodes there and return the index that stands for
    the node, or ``None`` to keep the (possibly edited) node as it is.  Argument
    nodes and heads follow; parameter names are whatever the visitor leaves.

    AMP's ``amp_cast``/``amp_multicast`` nodes (a graph built after ``amp.init()``) are kept:
    ``Symbol.tojson()`` drops them by default, which turned every rewritten graph of an fp16
    run back into float32 (its blocks then met the float16 outputs of the others)."""
    graph = _graph_json(sym)
    new_nodes, remap = [], {}
    for i, node in enumerate(graph["nodes"]):
        node = dict(node, inputs=[[remap[e[0]]] + list(e[1:]) for e in node["inputs"]])
        index = visit(node, new_nodes)
        if index is None:
            index = len(new_nodes)
            new_nodes.append(node)
        remap[i] = index
    graph["nodes"] = new_nodes
    graph["arg_nodes"] = [i for i, n in enumerate(new_nodes) if n["op"] == "null"]
    graph["heads"] = [[remap[h[0]]] + list(h[1:]) for h in graph["heads"]]
    graph.pop("node_row_ptr", None)
    return mx.sym.load_json(json.dumps(graph))


def _graph_json(sym):
    return json.loads(sym.tojson(remove_amp_cast=False))


#: The operators ``mxnet.contrib.amp`` inserts into graphs built while it is active.
AMP_CAST_OPS = ("amp_cast", "amp_multicast")


def count_amp_casts(sym):
    """The number of AMP cast nodes in ``sym`` (0 for a graph built without ``amp.init()``)."""
    return sum(n["op"] in AMP_CAST_OPS for n in _graph_json(sym)["nodes"])


def insert_flatten(sym, before=lambda node, producer: True):
    """``sym`` with an explicit ``Flatten`` in front of every flattening FullyConnected
    for which ``before(node, producer)`` holds (and whose input is not a Flatten yet).
    Neither results nor parameter names change."""
    names = {n["name"] for n in _graph_json(sym)["nodes"]}

    def visit(node, new_nodes):
        if node["op"] != "FullyConnected" or node.get("attrs", {}).get("flatten", "True") not in ("True", "true", "1"):
            return None
        src = node["inputs"][0]
        producer = new_nodes[src[0]]
        if producer["op"] == "Flatten" or not before(node, producer):
            return None
        fname = node["name"] + "_flatten_input"
        while fname in names:
            fname += "_"
        names.add(fname)
        new_nodes.append({"op": "Flatten", "name": fname, "inputs": [src]})
        node["inputs"] = [[len(new_nodes) - 1, 0, 0]] + node["inputs"][1:]
        return None

    return rewrite_graph(sym, visit)


def mkldnn_safe(sym):
    """``sym`` with a ``Flatten`` inserted wherever a FullyConnected reads a BatchNorm
    output directly (InsightFace's GDC head: ``conv_6dw7_7`` BN -> ``pre_fc1``).

    MXNet 1.9.1 with MKLDNN fails on the second forward of such a graph ("We can't
    generate TBlob for MKLDNN data"); the Flatten changes neither the result nor
    any parameter name.  Graphs without the pattern are returned unchanged."""
    nodes = _graph_json(sym)["nodes"]
    if not any(n["op"] == "FullyConnected" and nodes[n["inputs"][0][0]]["op"] == "BatchNorm" for n in nodes):
        return sym
    return insert_flatten(sym, lambda node, producer: producer["op"] == "BatchNorm")


# ------------------------------------------------------------------ freezing
def freeze_symbol(sym, param_shapes=None):
    """A copy of ``sym`` for a frozen teacher: every BatchNorm uses its global
    (running) statistics in training mode too, and every Dropout becomes an
    identity, so the teacher's function is the same whether or not autograd
    records in training mode.  Parameter names (and their order) are unchanged.

    With ``param_shapes`` (name -> shape), every per-channel PReLU
    (``LeakyReLU act_type='prelu'``, InsightFace's ``Act``) whose slope shape is
    known is computed as ``relu(x) + g * min(x, 0)``, the product by a 1x1
    depthwise convolution whose weight is the slope reshaped to (C, 1, 1, 1).
    For a fixed slope this is the same function bit for bit (one of the two
    terms is an exact zero) with the same gradient to ``x`` (up to float32
    rounding where a later kernel sees another memory layout); MXNet 1.9.1's CPU
    PReLU, a generic broadcast kernel with a generic-reduce backward, cost
    several times a convolution of the same tensor and dominated the teacher
    tails' backward (docs/benchmarks.md, bench_train).  The rewrite is for
    frozen slopes only: it would sum a trainable slope's gradient in another order."""
    shapes = dict(param_shapes or {})
    amp = count_amp_casts(sym) > 0

    def visit(node, new_nodes):
        op, attrs = node["op"], node.get("attrs", {})
        if op == "BatchNorm":
            node["attrs"] = dict(attrs, use_global_stats="True")
        elif op == "Dropout":
            node["op"] = "_copy"
            node["attrs"] = {}
        else:
            return _visit_prelu(node, new_nodes, shapes, amp)
        return None

    return rewrite_graph(sym, visit)


def prelu_as_depthwise(sym, param_shapes):
    """``sym`` with every per-channel PReLU whose slope shape is in ``param_shapes`` computed as
    ``relu(x) + g * min(x, 0)`` through a 1x1 depthwise convolution (see ``freeze_symbol``), for
    a *trainable* network.  The forward is the same bit for bit; the slope's gradient is the
    same sum in another order (float32 rounding).  Why: MXNet 1.9.1's CPU PReLU backward reduces
    the slope gradient with a generic kernel that cost 3-4x the whole rest of a MobileFaceNet
    training step at 32x32 (docs/benchmarks.md, profile section); MKLDNN's depthwise weight
    gradient does the same sum fast.  Parameter names and shapes are unchanged, so checkpoints
    keep InsightFace's symbol."""
    shapes = dict(param_shapes)
    amp = count_amp_casts(sym) > 0
    return rewrite_graph(sym, lambda node, new_nodes: _visit_prelu(node, new_nodes, shapes, amp))


def amp_safe_prelu(sym):
    """``sym`` with both inputs of every PReLU cast to float16 when ``sym`` was built under AMP.

    PReLU (``LeakyReLU act_type='prelu'``) is in none of MXNet 1.9.1's AMP lists, so AMP leaves
    it float16 data and its float32 slope, which type inference refuses; it runs in float16 here,
    as the convolutions around it.  Graphs without AMP casts are returned unchanged."""
    if not count_amp_casts(sym):
        return sym
    return rewrite_graph(sym, lambda node, new_nodes: _visit_prelu(node, new_nodes, {}, True))


def _is_prelu(node):
    return node["op"] == "LeakyReLU" and node.get("attrs", {}).get("act_type") == "prelu" and len(node["inputs"]) == 2


def _visit_prelu(node, new_nodes, shapes, amp=False):
    """The PReLU ``node`` as the depthwise form when its slope shape is known, else (under AMP)
    with both inputs cast to float16; any other node is kept."""
    if not _is_prelu(node):
        return None
    gamma = new_nodes[node["inputs"][1][0]]
    shape = tuple(shapes.get(gamma["name"]) or ()) if gamma["op"] == "null" else ()
    if len(shape) == 1 and shape[0] > 1:
        return _prelu_as_depthwise(new_nodes, node, int(shape[0]), amp)
    if amp:
        node["inputs"] = [_amp_cast(new_nodes, node["name"], e, i) for i, e in enumerate(node["inputs"])]
    return None


def _amp_cast(new_nodes, name, entry, i, dtype="float16"):
    """Append ``amp_cast(entry, dtype)`` (what AMP puts before every input of an fp16 operator)."""
    new_nodes.append({"op": "amp_cast", "name": f"{name}_amp_cast{i}", "attrs": {"dtype": dtype}, "inputs": [entry]})
    return [len(new_nodes) - 1, 0, 0]


def _prelu_as_depthwise(new_nodes, node, channels, amp=False):
    """Append relu(x) + conv1x1_depthwise(min(x, 0), reshape(gamma)) for the PReLU ``node``
    (inputs already remapped) to ``new_nodes``; returns the index of the sum, which keeps
    the PReLU's name.  Under ``amp`` the convolution's inputs get the float16 casts AMP gives
    every Convolution (the slope is a float32 parameter)."""
    data, gamma = node["inputs"]
    name = node["name"]

    def add(op, suffix, inputs, **attrs):
        new_nodes.append({"op": op, "name": name + suffix, "attrs": {k: str(v) for k, v in attrs.items()},
                          "inputs": inputs})
        return [len(new_nodes) - 1, 0, 0]

    pos = add("Activation", "_pos", [data], act_type="relu")
    neg = add("_minimum_scalar", "_neg", [data], scalar="0.0")
    weight = add("Reshape", "_slope", [gamma], shape="(-1, 1, 1, 1)")
    if amp:
        neg, weight = _amp_cast(new_nodes, name, neg, 0), _amp_cast(new_nodes, name, weight, 1)
        pos = _amp_cast(new_nodes, name, pos, 2)  # relu keeps the dtype of x: fp32 where x is
    scaled = add("Convolution", "_negscaled", [neg, weight], kernel="(1, 1)", num_filter=channels,
                 num_group=channels, no_bias="True")
    return add("elemwise_add", "", [pos, scaled])[0]
