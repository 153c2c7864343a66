"""``shrinkteanet export``: ONNX, MKLDNN-fused MXNet and INT8 MXNet models of one
InsightFace-layout checkpoint, each checked after it is written.

The pieces: ``graph`` (the deploy graph all three start from), ``onnx_export`` (ONNX,
checked with onnxruntime), ``cpu`` (MKLDNN fusion and INT8 quantisation), ``runner``
(fixed-batch execution and the second-forward check).  This module only orchestrates
them into the report ``export_all`` returns.
"""
import dataclasses
import os
import time

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.outputs import MIN_FREE, Input, Output, check_outputs, file_output
from shrinkteanet.deploy.cpu import load_images, mkldnn_model, quantize_int8
from shrinkteanet.deploy.graph import deploy_params, deploy_symbol
from shrinkteanet.deploy.onnx_export import ONNX_TOLERANCE, check_onnx, export_onnx, require_onnx
from shrinkteanet.deploy.runner import Runner, fixed_batch, twice_ok, verification_accuracy
from shrinkteanet.eval.embed import load_model, model_input_size, require_input_size
from shrinkteanet.eval.image_files import cosine_rows, load_bin_checked
from shrinkteanet.model.checkpoint import checkpoint_paths

log = get_logger(__name__)

__all__ = ["ONNX_TOLERANCE", "export_all", "export_outputs"]


@dataclasses.dataclass(frozen=True)
class _Source:
    """The checkpoint being exported: its fc1 graph and parameters, its deploy graph, the
    input side, and the reference outputs of the unfused deploy graph on ``fixed_batch``."""

    prefix: str
    epoch: int
    sym: object
    arg: dict
    aux: dict
    image_size: int
    dsym: object
    darg: dict
    daux: dict
    x: np.ndarray
    ref: np.ndarray

    @classmethod
    def load(cls, model, image_size=None):
        """Load ``model = (prefix, epoch)``; ``image_size`` must fit the weights (default: the
        side they fit)."""
        prefix, epoch = model
        sym, arg, aux = load_model(model)
        if image_size is None:
            image_size = model_input_size(sym, arg)
        else:
            image_size = require_input_size(sym, arg, image_size, what="--image-size")
        dsym = deploy_symbol(sym)
        darg, daux = deploy_params(dsym, arg, aux)
        x = fixed_batch(image_size)
        ref = Runner(dsym, darg, daux, batch_size=len(x), image_size=image_size, subgraph=False,
                     name=f"--model {prefix},{epoch}").run(x)
        return cls(prefix, epoch, sym, arg, aux, int(image_size), dsym, darg, daux, x, ref)

    @property
    def emb_size(self):
        return int(self.dsym.infer_shape(data=(1, 3, self.image_size, self.image_size))[1][0][1])


def export_outputs(model, *, onnx=None, mkldnn=None, int8=None, calib=None, eval_bin=None):
    """``(outputs, inputs)`` of one export (``core.outputs``): the ONNX file and the two files of
    each MXNet model (``P-symbol.json``, ``P-%04d.params``), each needing about the source's
    parameter file in space; the checkpoint (prefix, symbol, parameters), ``calib`` and
    ``eval_bin``.  ``check_outputs`` on them refuses ``--mkldnn P`` for ``--model P,E``."""
    prefix, epoch = model
    label = f"--model {prefix},{epoch}"
    params = checkpoint_paths(prefix, epoch)[1]
    need = MIN_FREE + (os.path.getsize(params) if os.path.isfile(params) else 0)
    outs = [file_output("--onnx", onnx, need=need)]
    for option, out in (("--mkldnn", mkldnn), ("--int8", int8)):
        if out:
            outs += [Output(f"{option} {out}", p, need=need if p.endswith(".params") else MIN_FREE)
                     for p in checkpoint_paths(out, epoch)]
    inputs = [Input(label, p) for p in (prefix, *checkpoint_paths(prefix, epoch))]
    inputs += [Input(f"{o} {v}", v) for o, v in (("--calib", calib), ("--eval-bin", eval_bin)) if v]
    return outs, inputs


def export_all(model, *, onnx=None, mkldnn=None, int8=None, calib=None, calib_mode="naive", num_calib=256,
               eval_bin=None, image_size=None, tolerance=ONNX_TOLERANCE, granularity="channel-wise", batch_size=32):
    """Everything ``shrinkteanet export`` does; returns the report dict.

    Parameters
    ----------
    model : (str, int)
        ``(prefix, epoch)`` of the checkpoint.
    onnx : str, optional
        ONNX output path.
    mkldnn, int8 : str, optional
        Output prefixes of the MKLDNN-fused and INT8 models (the epoch is kept).  Each
        exported MXNet model is loaded back from disk and run twice on the same batch
        (the MKLDNN TBlob failure is a second-forward failure).
    calib : str, optional
        Calibration images for INT8 (``.rec`` set or ``.bin``); required with ``int8``.
    calib_mode, num_calib, granularity, batch_size
        INT8 calibration (``cpu.quantize_int8``).
    eval_bin : str, optional
        ``.bin`` on which the INT8 accuracy change is measured (default: ``calib`` when
        it is a ``.bin``).
    image_size : int, optional
        Input side; default: the one the weights fit.
    tolerance : float
        Largest ONNX-vs-MXNet max abs difference that passes.

    Returns
    -------
    dict
        ``model``, ``image_size``, ``emb_size`` and one entry per exported model.
    """
    check_outputs(*export_outputs(model, onnx=onnx, mkldnn=mkldnn, int8=int8, calib=calib, eval_bin=eval_bin))
    if onnx:
        require_onnx()
    src = _Source.load(model, image_size)
    report = {"model": f"{src.prefix},{src.epoch}", "image_size": src.image_size, "emb_size": src.emb_size}
    if onnx:
        report["onnx"] = _export_onnx_checked(src, onnx, tolerance)
    if mkldnn:
        report["mkldnn"] = _export_mkldnn_checked(src, mkldnn)
    if int8:
        if not calib:
            raise InputError("--int8 needs --calib FILE (.rec set or .bin) for calibration images")
        report["int8"] = _export_int8_checked(src, int8, calib=calib, calib_mode=calib_mode, num_calib=num_calib,
                                              eval_bin=eval_bin, granularity=granularity, batch_size=batch_size)
    return report


def _export_onnx_checked(src, path, tolerance):
    """Write the ONNX model and compare it with MXNet through onnxruntime."""
    import onnx

    t = time.time()
    export_onnx(src.sym, src.arg, src.aux, path, image_size=src.image_size)
    diff = check_onnx(path, src.sym, src.arg, src.aux, image_size=src.image_size, batch=src.x)
    opset = max(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))
    log.info("ONNX %s: onnxruntime max abs diff %.3g (%s)", path, diff, "ok" if diff <= tolerance else "FAILED")
    return {"path": path, "opset": int(opset), "max_abs_diff": diff, "tolerance": float(tolerance),
            "ok": bool(diff <= tolerance), "batch": len(src.x), "seconds": time.time() - t}


def _save_and_reload(src, prefix, model):
    """Write ``model = (sym, arg, aux)`` as ``prefix`` at the source's epoch, read it back
    from disk, and run it twice: ``(saved triple, runner, second forward repeats?)``."""
    import mxnet as mx

    from shrinkteanet.model.checkpoint import save_checkpoint

    save_checkpoint(prefix, src.epoch, *model)
    saved = mx.model.load_checkpoint(prefix, src.epoch)
    r = Runner(*saved, batch_size=len(src.x), image_size=src.image_size)
    return saved, r, twice_ok(r)


def _export_mkldnn_checked(src, prefix):
    """The MKLDNN-fused fp32 model, checked against the unfused deploy graph."""
    _, r, ok = _save_and_reload(src, prefix, mkldnn_model(src.sym, src.arg, src.aux))
    diff = float(np.abs(r.run(src.x) - src.ref).max())
    log.info("MKLDNN model %s-symbol.json: max abs diff %.3g vs unfused, repeat %s", prefix, diff, ok)
    return {"prefix": prefix, "epoch": int(src.epoch), "max_abs_diff": diff, "repeat_ok": ok}


def _export_int8_checked(src, prefix, *, calib, calib_mode, num_calib, eval_bin, granularity, batch_size):
    """The INT8 model, calibrated on ``calib``, with its cosine to fp32 and (given a
    ``.bin``) its verification accuracy change."""
    cal = load_images(calib, num_calib, src.image_size)
    quantized = quantize_int8(src.sym, src.arg, src.aux, cal, calib_mode=calib_mode, granularity=granularity,
                              batch_size=batch_size)
    saved, _, ok = _save_and_reload(src, prefix, quantized)
    used = min(batch_size, len(cal))
    entry = {"prefix": prefix, "epoch": int(src.epoch), "calib": calib, "calib_mode": calib_mode,
             "num_calib": int(len(cal) // used * used), "granularity": granularity, "repeat_ok": ok}
    if eval_bin is None and str(calib).endswith(".bin"):
        eval_bin = calib
    fp = Runner(src.dsym, src.darg, src.daux, batch_size=batch_size, image_size=src.image_size,
                name=f"--model {src.prefix},{src.epoch}")
    q = Runner(*saved, batch_size=batch_size, image_size=src.image_size)
    if eval_bin:
        images, issame = load_bin_checked(eval_bin, src.image_size)
        acc_fp, emb_fp = verification_accuracy(fp, images, issame)
        acc_q, emb_q = verification_accuracy(q, images, issame)
        entry.update({"eval_bin": eval_bin, "accuracy_fp32": acc_fp["accuracy"], "accuracy_int8": acc_q["accuracy"],
                      "accuracy_change": acc_q["accuracy"] - acc_fp["accuracy"]})
    else:
        emb_fp, emb_q = fp.embed(cal), q.embed(cal)
    cos = cosine_rows(emb_fp, emb_q)
    entry.update({"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())})
    log.info("INT8 model %s-symbol.json: cosine to fp32 mean %.5f min %.5f", prefix, cos.mean(), cos.min())
    return entry
