"""CPU deployment models in MXNet: MKLDNN-fused fp32 and INT8, both from the deploy
graph with PReLU in MKLDNN-native ops (``graph.prelu_as_mkldnn_ops``).

INT8: ``mx.contrib.quantization.quantize_model`` between two MKLDNN_QUANTIZE fusions
(what ``quantize_model_mkldnn`` does) with naive (min/max) or entropy (KL) calibration
over face images from a ``.rec`` or ``.bin``; the first convolution and the fc head stay
fp32 by default.
"""
import time

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.deploy.graph import graph_json, deploy_params, deploy_symbol, prelu_as_mkldnn_ops
from shrinkteanet.eval.embed import check_input_size
from shrinkteanet.eval.image_files import load_bin_checked

log = get_logger(__name__)


def mkldnn_model(sym, arg_params, aux_params):
    """MKLDNN-fused fp32 graph (conv+bn+act(+sum) fusion,
    ``get_backend_symbol('MKLDNN')``) of the deploy graph with PReLU in
    MKLDNN-native ops (``prelu_as_mkldnn_ops``), with its parameters."""
    dsym = deploy_symbol(sym)
    arg, aux = deploy_params(dsym, arg_params, aux_params)
    psym, parg = prelu_as_mkldnn_ops(dsym, arg)
    return psym.get_backend_symbol("MKLDNN"), parg, aux


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
    nodes = graph_json(fsym)["nodes"]
    if excluded is None:
        first = next((n["name"] for n in graph_json(sym)["nodes"] if n["op"] == "Convolution"), None)
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


def quantize_int8(sym, arg_params, aux_params, calib_images, *, calib_mode="naive", granularity="channel-wise",
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
