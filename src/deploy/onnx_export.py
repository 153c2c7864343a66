"""ONNX export of the deploy graph (``graph.deploy_symbol``), checked with onnxruntime.

``mx.onnx.export_model`` (opset of the installed ``onnx``, translated with mxnet's
opset-13 rules) with a dynamic batch axis, then three fixes of the exporter's graph:
PReLU slopes reshaped to ``(C, 1, 1)`` (ONNX broadcasts from the last axis, MXNet's
``LeakyReLU(prelu)`` along the channel axis), initializers removed from the graph inputs
(so onnxruntime may constant-fold them), the output declared ``(batch, D)``.  The file is
checked against the MXNet model with onnxruntime on a fixed batch.

The module is not called ``onnx``: inside it ``import onnx`` must name the ONNX package.
"""
import os

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.deploy.graph import deploy_params, deploy_symbol
from shrinkteanet.deploy.runner import Runner, fixed_batch

#: Default onnxruntime parity tolerance (max abs difference of fc1 on a fixed batch).
ONNX_TOLERANCE = 1e-4


def require_onnx():
    """An ONNX file is written only when it can also be checked: onnx and onnxruntime must
    import, else one ``InputError`` line saying how to install them (before anything is written)."""
    from shrinkteanet.core.errors import InputError

    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise InputError(f"--onnx needs the {module} package to write and check the model: install the onnx "
                             f"extra (pip install -c constraints.txt \".[onnx]\" in the repository), or leave "
                             f"--onnx out") from None


def _fix_onnx(model, emb_size):
    """The three fixes of the exporter's graph (module docstring); checked with ``onnx.checker``."""
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


def export_onnx(sym, arg_params, aux_params, path, *, image_size=IMAGE_SIZE):
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
    """An onnxruntime CPU session on ``path``; ``threads``: intra-op threads (default: onnxruntime's)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the exporter's shape hints trigger harmless warnings
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def check_onnx(path, sym, arg_params, aux_params, *, image_size=IMAGE_SIZE, batch=None):
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
