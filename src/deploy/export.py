"""Deployment of a trained embedding network: ONNX, MKLDNN-fused MXNet, INT8 MXNet.

All three start from the same *deploy graph* of an InsightFace-layout checkpoint
(``fc1`` output, raw RGB 0-255 input, normalisation inside):

* every ``FullyConnected`` that flattens gets an explicit ``Flatten`` in front and
  ``flatten="True"`` written out.  MXNet's default is ``flatten=True`` but
  ``mx.onnx`` reads a missing attribute as false and emits a rank-keeping Gemm that
  onnxruntime rejects; and on MXNet 1.9.1 CPU the MKLDNN fully-connected fed by a
  4-D MKLDNN tensor (MobileFaceNet's GDC head) leaves ``fc1`` in MKLDNN layout so
  that the *second* ``Module.forward`` fails with "We can't generate TBlob for
  MKLDNN data".  An explicit Flatten reorders to the default layout first; the
  arithmetic is unchanged (the tests run each exported model twice).
* BatchNorm with ``fix_gamma`` (InsightFace's ``fc1``: ``fix_gamma=True``, and
  MXNet's default when the attribute is absent) computes with gamma = 1 whatever
  the stored value; ``mx.onnx`` ignores the attribute, so gamma is set to 1 in the
  exported parameters, as InsightFace's own ONNX conversion does.

ONNX: ``mx.onnx.export_model`` (opset of the installed ``onnx``, translated with
mxnet's opset-13 rules) with a dynamic batch axis, then three
fixes of the exporter's graph: PReLU slopes reshaped to ``(C, 1, 1)`` (ONNX
broadcasts from the last axis, MXNet's ``LeakyReLU(prelu)`` along the channel
axis), initializers removed from the graph inputs (so onnxruntime may
constant-fold them), the output declared ``(batch, D)``.  The file is checked
against the MXNet model with onnxruntime on a fixed batch.

MKLDNN and INT8 graphs replace PReLU by MKLDNN-native ops first
(``prelu_as_mkldnn_ops``: MXNet 1.9.1 runs PReLU outside MKLDNN, several times
slower than the rest of the network).

INT8: ``mx.contrib.quantization.quantize_model`` between two MKLDNN_QUANTIZE
fusions (what ``quantize_model_mkldnn`` does) with naive (min/max) or entropy (KL)
calibration over face images from a ``.rec`` or ``.bin``; the first convolution
and the fc head stay fp32 by default.
"""
import json
import os
import time

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)

#: Default onnxruntime parity tolerance (max abs difference of fc1 on a fixed batch).
ONNX_TOLERANCE = 1e-4

_TRUE = ("True", "true", "1")


# ----------------------------------------------------------------------------- model graph


def load_model(model):
    """``(sym_fc1, arg_params, aux_params)`` from ``(prefix, epoch)`` or a ready
    triple, cut at ``fc1_output`` (the evaluation helper's loader: one place)."""
    from shrinkteanet.eval.embed import load_model as _load

    return _load(model)


def _graph(sym):
    return json.loads(sym.tojson())


def deploy_symbol(sym):
    """The deploy graph of ``sym``: explicit ``Flatten`` before each flattening
    ``FullyConnected`` (see the module docstring for the two bugs this avoids).
    Parameter names and values are those of ``sym``."""
    from shrinkteanet.model.network import insert_flatten

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
    for node in _graph(sym)["nodes"]:
        if node["op"] == "BatchNorm" and node.get("attrs", {}).get("fix_gamma", "True") in _TRUE:
            gname = node["name"] + "_gamma"
            if gname in arg:
                arg[gname] = mx.nd.ones(arg[gname].shape, dtype="float32")
    return arg, aux


def input_size_fits(sym, arg_params, size):
    """True when every parameter shape of ``sym`` at input ``size`` x ``size``
    equals the stored one (the FC after the last feature map pins the size, up to
    the rounding of the strided convolutions)."""
    shapes = {k: tuple(v.shape) for k, v in arg_params.items()}
    try:
        a, _, _ = sym.infer_shape(data=(1, 3, int(size), int(size)))
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


def save_model(prefix, epoch, sym, arg_params, aux_params):
    """``PREFIX-symbol.json`` + ``PREFIX-%04d.params`` (``mx.model.save_checkpoint``
    layout), each written atomically."""
    import mxnet as mx

    from shrinkteanet.core.utils import atomic_open

    with atomic_open(f"{prefix}-symbol.json", "w") as f:
        f.write(sym.tojson())
    blob = {f"arg:{k}": v for k, v in arg_params.items()}
    blob.update({f"aux:{k}": v for k, v in aux_params.items()})
    path = f"{prefix}-{int(epoch):04d}.params"
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        mx.nd.save(tmp, blob)  # mx.nd.save wants a path, so temp path + rename
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ----------------------------------------------------------------------------- running


class Runner:
    """Fixed-batch ``Module`` over any of the deploy graphs (fp32, fused, INT8).

    The last partial batch is padded, so the executor never reshapes.
    ``subgraph=False`` binds with ``MXNET_SUBGRAPH_BACKEND=NONE`` (MXNet 1.9.1 CPU
    otherwise fuses with MKLDNN at bind time by default): the unfused baseline."""

    def __init__(self, sym, arg_params, aux_params, batch_size=32, image_size=IMAGE_SIZE, subgraph=True):
        import mxnet as mx

        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        old = os.environ.get("MXNET_SUBGRAPH_BACKEND")
        if not subgraph:
            os.environ["MXNET_SUBGRAPH_BACKEND"] = "NONE"
        try:
            self.mod = mx.mod.Module(sym, data_names=("data",), label_names=None, context=mx.cpu())
            self.mod.bind([("data", (self.batch_size, 3, self.image_size, self.image_size))], for_training=False)
            self.mod.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
        finally:
            if not subgraph:
                if old is None:
                    os.environ.pop("MXNET_SUBGRAPH_BACKEND", None)
                else:
                    os.environ["MXNET_SUBGRAPH_BACKEND"] = old

    def forward(self, batch):
        """One batch NCHW float32 of exactly ``batch_size`` -> (batch_size, D)."""
        import mxnet as mx

        self.mod.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
        return self.mod.get_outputs()[0].asnumpy()

    def run(self, x):
        """NCHW float32 (any N) -> (N, D) float32."""
        x = np.asarray(x, dtype=np.float32)
        check_input_size(self.image_size, x.shape[-1], what="the data")
        out = []
        for i in range(0, len(x), self.batch_size):
            b = x[i : i + self.batch_size]
            n = len(b)
            if n < self.batch_size:
                b = np.concatenate([b, np.zeros((self.batch_size - n,) + b.shape[1:], np.float32)])
            out.append(self.forward(b)[:n])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed(self, images, flip=True):
        """uint8 NHWC RGB -> image + mirror embeddings added (InsightFace's
        verification), float32 (N, D), not normalised."""
        x = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32)
        emb = self.run(x)
        if flip:
            emb = emb + self.run(x[:, :, :, ::-1])
        return emb


def fixed_batch(image_size, n=4, seed=0):
    """The deterministic batch used for parity checks: raw pixels 0..255, NCHW."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(n, 3, image_size, image_size)).astype(np.float32)


# ----------------------------------------------------------------------------- ONNX


def _fix_onnx(model, emb_size):
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "PRelu" and node.input[1] in inits:
            t = inits[node.input[1]]
            a = numpy_helper.to_array(t)
            if a.ndim == 1:
                t.CopyFrom(numpy_helper.from_array(a.reshape(-1, 1, 1), t.name))
    keep = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(keep)
    out = g.output[0]
    dims = out.type.tensor_type.shape.dim
    del dims[:]
    d0 = dims.add()
    d0.dim_param = "batch"
    d1 = dims.add()
    d1.dim_value = int(emb_size)
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    return model


def export_onnx(sym, arg_params, aux_params, path, image_size=IMAGE_SIZE):
    """Write ``path`` (ONNX, input ``data`` ``(batch, 3, S, S)``, output ``fc1``
    ``(batch, D)``) from the deploy graph; atomic."""
    import tempfile

    import mxnet as mx
    import onnx

    from shrinkteanet.core.utils import atomic_write_bytes

    dsym = deploy_symbol(sym)
    arg, aux = deploy_params(dsym, arg_params, aux_params)
    _, out_shapes, _ = dsym.infer_shape(data=(1, 3, image_size, image_size))
    params = dict(arg)
    params.update(aux)
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "raw.onnx")
        mx.onnx.export_model(
            dsym,
            params,
            in_shapes=[(1, 3, image_size, image_size)],
            in_types=[np.float32],
            onnx_file_path=raw,
            dynamic=True,
            dynamic_input_shapes=[(None, 3, image_size, image_size)],
        )
        model = _fix_onnx(onnx.load(raw), out_shapes[0][1])
    atomic_write_bytes(path, model.SerializeToString())
    return path


def onnx_session(path, threads=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the exporter's shape hints trigger harmless warnings
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def check_onnx(path, sym, arg_params, aux_params, image_size=IMAGE_SIZE, batch=None):
    """Max abs difference between onnxruntime and MXNet (deploy graph, fp32) on a
    fixed batch, run at two batch sizes through the dynamic axis."""
    x = fixed_batch(image_size) if batch is None else np.asarray(batch, np.float32)
    dsym = deploy_symbol(sym)
    arg, aux = deploy_params(dsym, arg_params, aux_params)
    ref = Runner(dsym, arg, aux, batch_size=len(x), image_size=image_size, subgraph=False).run(x)
    sess = onnx_session(path)
    name = sess.get_inputs()[0].name
    full = sess.run(None, {name: x})[0]
    one = sess.run(None, {name: x[:1]})[0]
    if full.shape != ref.shape or one.shape != (1,) + ref.shape[1:]:
        raise RuntimeError(f"{path}: onnxruntime output shape {full.shape}/{one.shape}, mxnet {ref.shape}")
    return float(max(np.abs(full - ref).max(), np.abs(one - ref[:1]).max()))


# ----------------------------------------------------------------------------- MKLDNN and INT8


def prelu_as_mkldnn_ops(sym, arg_params):
    """``sym`` with every per-channel PReLU (``LeakyReLU(act_type='prelu')``, He et
    al. 2015 eq. 1: ``f(x) = max(0, x) + a * min(0, x)``) rewritten as
    ``f(x) = a * x + (1 - a) * max(0, x)``: a ReLU ``Activation`` and two depthwise
    1x1 convolutions with weights ``a`` and ``1 - a``, added.  Returns ``(sym, arg_params)``.

    MXNet 1.9.1 has no MKLDNN kernel for PReLU and its conv fusion takes only
    relu/leaky/gelu, so each of MobileFaceNet's 33 PReLUs reorders the blocked
    MKLDNN tensor to NCHW, runs a single-threaded broadcast kernel and reorders
    back: measured here 4-7x the time of the whole network with ReLU in their
    place.  The rewritten ops are all MKLDNN-native (the add fuses into the second
    convolution as a sum post-op) and quantise like any convolution.  The sum is
    the PReLU's original name, so ``<name>_output`` still names the activation.
    Arithmetic is unchanged up to float rounding; the ONNX export keeps PReLU."""
    import mxnet as mx

    g = _graph(sym)
    arg = dict(arg_params)
    nodes, out, remap = g["nodes"], [], {}
    names = {n["name"] for n in nodes}

    def add(node):
        out.append(node)
        return len(out) - 1

    def fresh(name):
        while name in names:
            name += "_"
        names.add(name)
        return name

    for i, node in enumerate(nodes):
        node = dict(node)
        node["inputs"] = [[remap[a][0], b if remap[a][1] is None else remap[a][1], c] for a, b, c in node["inputs"]]
        attrs = node.get("attrs", {})
        if node["op"] == "LeakyReLU" and attrs.get("act_type") == "prelu":
            x, gin = node["inputs"][0], node["inputs"][1]
            gname = out[gin[0]]["name"]
            if out[gin[0]]["op"] != "null" or gname not in arg:
                raise InputError(f"PReLU {node['name']}: slope {gname} is not a stored parameter")
            a = arg[gname].asnumpy().astype(np.float32).reshape(-1)
            c = int(a.size)
            name = node["name"]
            wa, wb = fresh(name + "_lin_weight"), fresh(name + "_pos_weight")
            arg[wa] = mx.nd.array(a.reshape(c, 1, 1, 1))
            arg[wb] = mx.nd.array((1.0 - a).reshape(c, 1, 1, 1))
            dw = {"kernel": "(1, 1)", "num_filter": str(c), "num_group": str(c), "no_bias": "True"}
            relu = add({"op": "Activation", "name": fresh(name + "_relu"), "attrs": {"act_type": "relu"},
                        "inputs": [x]})
            vb = add({"op": "null", "name": wb, "inputs": []})
            pos = add({"op": "Convolution", "name": fresh(name + "_pos"), "attrs": dict(dw),
                       "inputs": [[relu, 0, 0], [vb, 0, 0]]})
            va = add({"op": "null", "name": wa, "inputs": []})
            neg = add({"op": "Convolution", "name": fresh(name + "_lin"), "attrs": dict(dw),
                       "inputs": [x, [va, 0, 0]]})
            remap[i] = (add({"op": "elemwise_add", "name": name, "inputs": [[neg, 0, 0], [pos, 0, 0]]}), 0)
            continue
        remap[i] = (add(node), None)
    used = {a for n in out for a, _, _ in n["inputs"]}
    keep = [j for j, n in enumerate(out) if n["op"] != "null" or j in used or n["name"] == "data"]
    idx = {j: k for k, j in enumerate(keep)}
    final = []
    for j in keep:
        n = dict(out[j])
        n["inputs"] = [[idx[a], b, c] for a, b, c in n["inputs"]]
        final.append(n)
    heads = [[idx[remap[a][0]], remap[a][1] if remap[a][1] is not None else b, c] for a, b, c in g["heads"]]
    new = mx.sym.load_json(json.dumps({"nodes": final, "arg_nodes": [k for k, n in enumerate(final) if n["op"] == "null"],
                                       "heads": heads, "attrs": g.get("attrs", {})}))
    need = set(new.list_arguments())
    return new, {k: v for k, v in arg.items() if k in need}


def mkldnn_model(sym, arg_params, aux_params):
    """MKLDNN-fused fp32 graph (conv+bn+act(+sum) fusion,
    ``get_backend_symbol('MKLDNN')``) of the deploy graph with PReLU in
    MKLDNN-native ops (``prelu_as_mkldnn_ops``), with its parameters."""
    dsym = deploy_symbol(sym)
    arg, aux = deploy_params(dsym, arg_params, aux_params)
    psym, parg = prelu_as_mkldnn_ops(dsym, arg)
    return psym.get_backend_symbol("MKLDNN"), parg, aux


def load_bin_checked(path, image_size):
    """``load_bin`` at the model's size; a set of another size is refused (naming
    both sizes) rather than resized, so a figure is never silently measured on
    rescaled faces."""
    from shrinkteanet.data.binfile import load_bin, read_bin_raw
    from shrinkteanet.data.recordio import decode_jpeg

    jpegs, _ = read_bin_raw(path)
    if len(jpegs):
        try:
            h, w = decode_jpeg(jpegs[0]).shape[:2]
        except Exception:
            raise InputError(f"{path}: image 0 cannot be decoded") from None
        if (h, w) != (image_size, image_size):
            raise InputError(f"model expects {image_size}x{image_size} input but {path} holds {h}x{w} images")
    return load_bin(path, image_size=(image_size, image_size))


def load_images(path, n=None, image_size=IMAGE_SIZE):
    """Up to ``n`` uint8 NHWC RGB face images from a ``.bin`` (evenly spread over its
    images) or a RecordIO set (directory, ``.rec`` or prefix; evenly spread keys);
    their size must be the model's ``image_size``."""
    if str(path).endswith(".bin"):
        images, _ = load_bin_checked(path, image_size)
        if n is not None and n < len(images):
            images = images[np.linspace(0, len(images) - 1, n).astype(int)]
    else:
        from shrinkteanet.data import FaceRecordDataset

        ds = FaceRecordDataset(path)
        if ds.image_size is not None and tuple(ds.image_size) != (image_size, image_size):
            h, w = ds.image_size
            raise InputError(f"model expects {image_size}x{image_size} input but {path} holds {h}x{w} images")
        idx = np.arange(len(ds)) if n is None or n >= len(ds) else np.linspace(0, len(ds) - 1, n).astype(int)
        images = np.stack([ds[int(i)][0] for i in idx])
        check_input_size(image_size, images.shape[1], what=f"{path}")
    return np.ascontiguousarray(images)


def _fused_exclusions(fsym, sym, excluded):
    """Names, in the MKLDNN_QUANTIZE-fused graph ``fsym``, of the nodes to keep in
    fp32.  ``excluded=None``: the first convolution (it sees the normalised image,
    whose three channels carry the most information per value) and the output
    layers (every FullyConnected and every BatchNorm left unfused, i.e.
    InsightFace's ``pre_fc1`` / ``fc1`` head) - the usual INT8 recipe of keeping the
    first and last layers in float.  Otherwise ``excluded`` = names of layers of
    the unfused graph; a fused node is kept in fp32 when it contains one."""
    nodes = _graph(fsym)["nodes"]
    if excluded is None:
        first = next((n["name"] for n in _graph(sym)["nodes"] if n["op"] == "Convolution"), None)
        want = {first} if first else set()
        out_ops = ("FullyConnected", "_sg_mkldnn_fully_connected", "BatchNorm")
        names = [n["name"] for n in nodes if n["op"] in out_ops]
    else:
        want, names = set(excluded), []
    for n in nodes:
        inner = {m["name"] for sg in n.get("subgraphs", []) for m in sg["nodes"]} | {n["name"]}
        if inner & want and n["name"] not in names:
            names.append(n["name"])
    return names


def quantize_int8(sym, arg_params, aux_params, calib_images, calib_mode="naive", granularity="channel-wise",
                  batch_size=32, excluded=None):
    """INT8 graph the way ``quantize_model_mkldnn`` builds it (MKLDNN_QUANTIZE
    fusion, ``quantize_model``, fusion again) on the deploy graph with PReLU in
    MKLDNN-native ops: quantised conv/fc with thresholds calibrated on
    ``calib_images`` (uint8 NHWC RGB): ``naive`` = min/max of each layer output,
    ``entropy`` = KL-optimal clipping.  ``granularity='channel-wise'`` keeps one
    weight scale per output channel (depthwise convolutions of MobileFaceNet lose
    much less accuracy that way).  ``excluded``: see ``_fused_exclusions`` (default:
    first conv and the fc head stay fp32; ``()`` quantises everything)."""
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_model

    if calib_mode not in ("naive", "entropy"):
        raise InputError(f"--calib-mode must be naive or entropy, got {calib_mode!r}")
    dsym = deploy_symbol(sym)
    arg, aux = deploy_params(dsym, arg_params, aux_params)
    psym, parg = prelu_as_mkldnn_ops(dsym, arg)
    # fused first so that the exclusions name the nodes quantize_model sees
    fsym = psym.get_backend_symbol("MKLDNN_QUANTIZE")
    names = _fused_exclusions(fsym, psym, excluded)
    x = np.ascontiguousarray(np.asarray(calib_images).transpose(0, 3, 1, 2), dtype=np.float32)
    bs = min(int(batch_size), len(x))
    n = (len(x) // bs) * bs
    it = mx.io.NDArrayIter(data=x[:n], batch_size=bs, data_name="data", label_name=None)
    t = time.time()
    qsym, qarg, qaux = quantize_model(
        fsym, parg, aux, data_names=("data",), label_names=None, ctx=mx.cpu(),
        excluded_sym_names=names or None, calib_mode=calib_mode, calib_data=it,
        num_calib_examples=n, quantized_dtype="auto", quantize_mode="smart", quantize_granularity=granularity,
        logger=None,
    )
    qsym = qsym.get_backend_symbol("MKLDNN_QUANTIZE")
    log.info("quantised to INT8 (%s calibration on %d images, %d layers kept fp32) in %.1f s",
             calib_mode, n, len(names), time.time() - t)
    return qsym, qarg, qaux


def cosine_rows(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def verification_accuracy(runner, images, issame):
    """InsightFace ``.bin`` accuracy (flip-fused embeddings, 10 folds) of one runner."""
    from shrinkteanet.eval.verification import evaluate

    emb = runner.embed(images, flip=True)
    return evaluate(emb, issame), emb


def twice_ok(runner):
    """Run the same batch twice and require identical outputs: the MKLDNN
    'can't generate TBlob' failure shows up only on the second forward."""
    x = fixed_batch(runner.image_size, n=runner.batch_size, seed=1)
    first = runner.forward(x)
    second = runner.forward(x)
    return bool(np.array_equal(first, second))


def export_all(model, onnx=None, mkldnn=None, int8=None, calib=None, calib_mode="naive", num_calib=256,
               eval_bin=None, image_size=None, tolerance=ONNX_TOLERANCE, granularity="channel-wise", batch_size=32):
    """Everything ``shrinkteanet export`` does; returns the report dict.

    ``model`` = ``(prefix, epoch)``; ``onnx`` = output path; ``mkldnn`` / ``int8`` =
    output prefixes (epoch kept).  Each exported MXNet model is loaded back from disk
    and run twice on the same batch (the MKLDNN TBlob failure is a second-forward
    failure).  INT8 needs ``calib`` (.rec or .bin); its accuracy change is measured on
    ``eval_bin`` (default: ``calib`` when it is a .bin)."""
    import mxnet as mx

    prefix, epoch = model
    sym, arg, aux = load_model(model)
    if image_size is None:
        image_size = model_input_size(sym, arg)
    else:
        image_size = require_input_size(sym, arg, image_size, what="--image-size")
    dsym = deploy_symbol(sym)
    darg, daux = deploy_params(dsym, arg, aux)
    emb_size = dsym.infer_shape(data=(1, 3, image_size, image_size))[1][0][1]
    report = {"model": f"{prefix},{epoch}", "image_size": int(image_size), "emb_size": int(emb_size)}
    x = fixed_batch(image_size)
    ref = Runner(dsym, darg, daux, batch_size=len(x), image_size=image_size, subgraph=False).run(x)

    if onnx:
        t = time.time()
        export_onnx(sym, arg, aux, onnx, image_size)
        import onnx as onnx_lib

        diff = check_onnx(onnx, sym, arg, aux, image_size, batch=x)
        opset = max(o.version for o in onnx_lib.load(onnx).opset_import if o.domain in ("", "ai.onnx"))
        report["onnx"] = {"path": onnx, "opset": int(opset), "max_abs_diff": diff, "tolerance": float(tolerance),
                          "ok": bool(diff <= tolerance), "batch": len(x), "seconds": time.time() - t}
        log.info("ONNX %s: onnxruntime max abs diff %.3g (%s)", onnx, diff, "ok" if diff <= tolerance else "FAILED")

    def reload_and_check(out_prefix):
        """The model as written to disk, and whether it survives a second forward."""
        saved = mx.model.load_checkpoint(out_prefix, epoch)
        r = Runner(*saved, batch_size=len(x), image_size=image_size)
        return saved, r, twice_ok(r)

    if mkldnn:
        msym, marg, maux = mkldnn_model(sym, arg, aux)
        save_model(mkldnn, epoch, msym, marg, maux)
        _, r, ok = reload_and_check(mkldnn)
        diff = float(np.abs(r.run(x) - ref).max())
        report["mkldnn"] = {"prefix": mkldnn, "epoch": int(epoch), "max_abs_diff": diff, "repeat_ok": ok}
        log.info("MKLDNN model %s-symbol.json: max abs diff %.3g vs unfused, repeat %s", mkldnn, diff, ok)

    if int8:
        if not calib:
            raise InputError("--int8 needs --calib FILE (.rec set or .bin) for calibration images")
        cal = load_images(calib, num_calib, image_size)
        qsym, qarg, qaux = quantize_int8(sym, arg, aux, cal, calib_mode, granularity, batch_size)
        save_model(int8, epoch, qsym, qarg, qaux)
        saved, _, ok = reload_and_check(int8)
        entry = {"prefix": int8, "epoch": int(epoch), "calib": calib, "calib_mode": calib_mode,
                 "num_calib": int(len(cal) // min(batch_size, len(cal)) * min(batch_size, len(cal))),
                 "granularity": granularity, "repeat_ok": ok}
        if eval_bin is None and str(calib).endswith(".bin"):
            eval_bin = calib
        fp = Runner(dsym, darg, daux, batch_size=batch_size, image_size=image_size)
        q = Runner(*saved, batch_size=batch_size, image_size=image_size)
        if eval_bin:
            images, issame = load_bin_checked(eval_bin, image_size)
            acc_fp, emb_fp = verification_accuracy(fp, images, issame)
            acc_q, emb_q = verification_accuracy(q, images, issame)
            entry.update({"eval_bin": eval_bin, "accuracy_fp32": acc_fp["accuracy"],
                          "accuracy_int8": acc_q["accuracy"],
                          "accuracy_change": acc_q["accuracy"] - acc_fp["accuracy"]})
        else:
            emb_fp, emb_q = fp.embed(cal), q.embed(cal)
        cos = cosine_rows(emb_fp, emb_q)
        entry.update({"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())})
        report["int8"] = entry
        log.info("INT8 model %s-symbol.json: cosine to fp32 mean %.5f min %.5f", int8, cos.mean(), cos.min())
    return report


# ----------------------------------------------------------------------------- image files -> embeddings

#: Cosine threshold of ``compare`` when none is given or calibrated: squared-L2
#: distance 1.4 between unit embeddings, about where InsightFace's LFW thresholds
#: for ArcFace-trained models lie (``cos = 1 - d / 2``).
DEFAULT_COSINE_THRESHOLD = 0.3

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def expand_image_paths(paths):
    """Files as given; a directory becomes its image files (sorted, recursive)."""
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out


def read_image(path):
    """RGB uint8 HWC from an image file (the evaluation helper's decoder);
    ``InputError`` naming the file when it is missing, unreadable or no image."""
    from shrinkteanet.eval.embed import read_image as _read

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        img = _read(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{path}: not a readable image")
    return img


def centre_crop(img, image_size):
    """Central square of the image, resized to ``image_size`` (no landmarks given).
    An image already ``image_size`` square is returned unchanged (an aligned crop)."""
    import cv2

    h, w = img.shape[:2]
    if h == w == image_size:
        return img
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    sq = img[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s > image_size else cv2.INTER_LINEAR
    return cv2.resize(sq, (image_size, image_size), interpolation=interp)


def read_landmarks(path):
    """``{image path: (5, 2) landmarks}`` from a text file, one image per line:
    ``PATH x1 y1 ... x5 y5`` (whitespace, tab or comma separated), or a face2rec2
    ``.lst`` line ``aligned PATH label [bbox x4] x1 y1 ... x5 y5``: the path and the
    last ten numbers are used.  Lookup accepts the path as written, its absolute
    path or, when unique, its base name."""
    table = {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read landmarks file ({e})") from None
    for ln, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) == 11:
            name, nums = parts[0], parts[1:]
        elif len(parts) >= 13 and len(parts) in (13, 17):
            name, nums = parts[1], parts[-10:]
        else:
            raise InputError(f"{path}:{ln}: expected PATH and 10 landmark numbers, got {len(parts)} fields")
        try:
            lm = np.asarray([float(v) for v in nums], dtype=np.float64).reshape(5, 2)
        except ValueError:
            raise InputError(f"{path}:{ln}: landmark values must be numbers") from None
        table[name] = lm
    return _LandmarkTable(table)


class _LandmarkTable(dict):
    def find(self, image_path):
        if image_path in self:
            return self[image_path]
        ap = os.path.abspath(image_path)
        for k, v in self.items():
            if os.path.abspath(k) == ap:
                return v
        base = os.path.basename(image_path)
        hits = [v for k, v in self.items() if os.path.basename(k) == base]
        return hits[0] if len(hits) == 1 else None


def prepare_faces(paths, image_size, landmarks=None, strict=False, progress=None):
    """Read and crop image files: ``(faces uint8 (N, S, S, 3), kept paths, skipped
    [(path, reason)])``.  With ``landmarks`` the face is aligned onto the ArcFace
    template (``shrinkteanet.data.align.norm_crop``), otherwise centre-cropped.
    Unreadable files are named in the log and skipped, or raise with ``strict``."""
    from shrinkteanet.data.align import norm_crop

    faces, kept, skipped = [], [], []
    for p in paths:
        try:
            img = read_image(p)
        except InputError as e:
            if strict:
                raise
            log.warning("skipping %s", e)
            skipped.append((p, str(e)))
            if progress is not None:
                progress.update(1)
            continue
        lm = landmarks.find(p) if landmarks is not None else None
        if landmarks is not None and lm is None:
            log.warning("%s: no landmarks in the landmarks file; centre crop", p)
        faces.append(norm_crop(img, lm, image_size) if lm is not None else centre_crop(img, image_size))
        kept.append(p)
        if progress is not None:
            progress.update(1)
    arr = np.stack(faces) if faces else np.zeros((0, image_size, image_size, 3), np.uint8)
    return arr, kept, skipped


def make_embedder(model, batch_size=64, image_size=None):
    """``(embedder, image_size)`` for a checkpoint: the evaluation helper's
    ``Embedder`` (flip fusion, MKLDNN, survives the TBlob bug) on the checkpoint's
    fc1 graph, at its input size (``image_size`` must fit the weights)."""
    sym, arg, aux = load_model(model)
    if image_size is None:
        image_size = model_input_size(sym, arg)
    else:
        require_input_size(sym, arg, image_size, what="--image-size")
    from shrinkteanet.eval.embed import Embedder

    return Embedder(model=(sym, arg, aux), batch_size=batch_size, image_size=image_size), int(image_size)


def normalize_rows(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_files(embedder, image_size, paths, landmarks=None, strict=False, chunk=512, flip=True, normalize=True):
    """Embeddings of image files, in chunks (bounded memory), with a progress bar
    for more than a few files: ``(emb float32 (N, D), kept paths, skipped)``."""
    from tqdm import tqdm

    out, kept, skipped = [], [], []
    with tqdm(total=len(paths), unit="img", desc="embed", disable=len(paths) <= 32 or None) as bar:
        for i in range(0, len(paths), chunk):
            faces, k, s = prepare_faces(paths[i : i + chunk], image_size, landmarks, strict, bar)
            kept += k
            skipped += s
            if len(faces):
                out.append(embedder.embed(faces, flip=flip))
    emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    if normalize and len(emb):
        emb = normalize_rows(emb)
    return emb, kept, skipped


def calibrate_threshold(embedder, bin_path, image_size):
    """Cosine threshold from a ``.bin`` set: InsightFace's best-accuracy squared-L2
    threshold ``d`` (mean over folds) between unit embeddings, as ``1 - d / 2``.
    Returns ``(cosine threshold, verification fields)``."""
    from shrinkteanet.eval.verification import evaluate

    images, issame = load_bin_checked(bin_path, image_size)
    fields = evaluate(embedder.embed(images, flip=True), issame)
    return 1.0 - fields["threshold"] / 2.0, fields
