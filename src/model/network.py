"""Symbols <-> Gluon: embedding blocks and frozen teacher tails (their graph rewrites are ``model.rewrites``).

* Checkpoint files (InsightFace's layout, cut at ``fc1_output``) are read and written
  by ``shrinkteanet.model.checkpoint``; ``EmbeddingNet.save_checkpoint`` /
  ``from_checkpoint`` go through it.
* ``EmbeddingNet``: a hybridizable ``gluon.SymbolBlock`` over a network of
  ``shrinkteanet.symbols`` (or any fc1 symbol) returning the embedding, or the
  embedding plus the four stage taps F_i^s of ShrinkTeaNet (Sec. 3.3).
* ``frozen_tail``: the teacher's [T_{i+1} o ... o T_n] of ShrinkTeaNet Eq. (6) as
  a block sharing the teacher's parameters by name, with BatchNorm on its global
  statistics, Dropout removed and ``grad_req='null'``: the teacher never
  changes while the gradient of the angular loss reaches the student through
  the tail's input.
"""

import mxnet as mx
import numpy as np
from mxnet import gluon

from shrinkteanet import symbols

from shrinkteanet.symbols import measure
from shrinkteanet.core.errors import InputError
from shrinkteanet.model import checkpoint
from shrinkteanet.model.checkpoint import cut_at_embedding
from shrinkteanet.model.rewrites import amp_safe_prelu, freeze_symbol, prelu_as_depthwise


# ------------------------------------------------------------------ blocks
def set_default_inits(params):
    """Give every non-weight parameter of a SymbolBlock its own initializer.

    Gluon hands the global initializer to every parameter without one, which
    fails on vectors (Xavier) and would not match InsightFace, whose Module
    initialises by name (``mx.init.Initializer`` dispatch): ``*_weight`` from the
    global initializer, ``*_bias``/``*_beta``/``*_moving_mean`` zero,
    ``*_gamma`` (BatchNorm scales and PReLU slopes) and ``*_moving_var`` one."""
    for name, param in params.items():
        if param.init is not None or name.endswith("_weight"):
            continue
        if name.endswith(("_gamma", "_moving_var", "_running_var")):
            param.init = mx.init.One()
        elif name.endswith(("_bias", "_beta", "_moving_mean", "_running_mean")):
            param.init = mx.init.Zero()


def _init_from(param, value, ctx):
    """Give ``param`` the value ``value`` (cast to the parameter's dtype), initialising it if needed."""
    param._load_init(value, ctx, cast_dtype=True, dtype_source="current")


class EmbeddingNet(gluon.SymbolBlock):
    """A face-embedding network as a Gluon block (hybridizable ``SymbolBlock``).

    ``network_or_symbol``: a name of ``shrinkteanet.symbols.NETWORKS`` (built with
    ``emb_size`` and ``**opts``) or an fc1 Symbol (e.g. from ``checkpoint.load_checkpoint``).
    ``with_taps``: return ``(emb, tap1, tap2, tap3, tap4)`` instead of ``emb``; for a
    Symbol, ``tap_outputs`` names the four internal outputs.  ``dtype='float16'``
    runs the stages in float16 (``symbols.get_stages``); input and outputs stay
    float32.  Input: NCHW float32 raw RGB 0-255.

    After construction the parameters are uninitialised: call ``initialize`` or
    ``set_params(arg_params, aux_params)``.
    """

    def __init__(self, network_or_symbol, emb_size=512, with_taps=False, dtype="float32", tap_outputs=None,
                 prelu_as_conv=False, **opts):
        self.split = None
        if isinstance(network_or_symbol, str):
            self.split = symbols.get_stages(network_or_symbol, emb_size, dtype=dtype, **opts)
            self.network = network_or_symbol
            embedding = self.split.full
            taps = self.split.taps
        else:
            if np.dtype(dtype) != np.float32:
                raise ValueError("EmbeddingNet: dtype other than float32 needs a network name, not a Symbol")
            embedding = cut_at_embedding(network_or_symbol)
            self.network = None
            taps = None
            if with_taps:
                if not tap_outputs or len(tap_outputs) != 4:
                    raise ValueError("EmbeddingNet: with_taps on a Symbol needs tap_outputs (4 output names)")
                internals = embedding.get_internals()
                names = internals.list_outputs()
                for name in tap_outputs:
                    if name not in names:
                        raise ValueError(f"EmbeddingNet: the symbol has no output {name!r}")
                taps = [internals[name] for name in tap_outputs]
        self.emb_size = emb_size
        self.with_taps = bool(with_taps)
        self.dtype = np.dtype(dtype).name
        self.embedding_symbol = embedding
        outputs = mx.sym.Group([embedding] + list(taps)) if with_taps else embedding
        known = {}
        if self.split is not None:
            arg_shapes, aux_shapes = measure.param_shapes(embedding, opts.get("image_size", 112))
            known = dict(arg_shapes, **aux_shapes)
            if prelu_as_conv:
                # the computed graph only; ``embedding_symbol`` (checkpoints) keeps the PReLUs
                outputs = prelu_as_depthwise(outputs, known)
        outputs = amp_safe_prelu(outputs)
        super().__init__(outputs, mx.sym.var("data", dtype="float32"))
        set_default_inits(self.collect_params())
        if known:
            # shapes known now: ``initialize`` allocates at once, no forward pass needed
            for name, param in self.collect_params().items():
                if name in known:
                    param.shape = known[name]

    # -- parameters ---------------------------------------------------------
    def set_params(self, arg_params, aux_params, ctx=None, allow_missing=False):
        """Copy InsightFace-style ``arg_params``/``aux_params`` into the block (by name);
        names the block does not have (``fc7_weight``) are ignored."""
        ctx = ctx or [mx.cpu()]
        ctx = ctx if isinstance(ctx, (list, tuple)) else [ctx]
        for name, param in self.collect_params().items():
            value = arg_params.get(name, aux_params.get(name))
            if value is None:
                if allow_missing:
                    continue
                raise InputError(f"parameter {name!r} missing from the given arg/aux params")
            _init_from(param, value, ctx)

    def get_params(self):
        """``(arg_params, aux_params)`` of the embedding symbol, float32 on the CPU."""
        auxs = set(self.embedding_symbol.list_auxiliary_states())
        args = set(self.embedding_symbol.list_arguments())
        arg_params, aux_params = {}, {}
        for name, param in self.collect_params().items():
            value = param.data(param.list_ctx()[0]).as_in_context(mx.cpu()).astype("float32")
            if name in auxs:
                aux_params[name] = value
            elif name in args:
                arg_params[name] = value
        return arg_params, aux_params

    def save_checkpoint(self, prefix, epoch):
        """InsightFace-layout checkpoint of the embedding part (``fc1`` symbol, float32)."""
        sym = self.embedding_symbol
        if self.split is not None and self.dtype != "float32":
            opts = {k: v for k, v in self.split.opts.items() if k != "dtype"}
            sym = symbols.get_symbol(self.network, self.emb_size, **opts)
        arg_params, aux_params = self.get_params()
        return checkpoint.save_checkpoint(prefix, epoch, sym, arg_params, aux_params)

    @classmethod
    def from_checkpoint(cls, prefix, epoch, network=None, ctx=None, **kwargs):
        """Load a checkpoint; with ``network`` the block is built from
        ``shrinkteanet.symbols`` (so taps and tails are available) and the saved
        parameters are loaded into it by name (an InsightFace r50/r100/mfn checkpoint
        needs no renaming)."""
        sym, arg_params, aux_params = checkpoint.load_checkpoint(prefix, epoch)
        if network is None:
            net = cls(sym, **kwargs)
        else:
            if "emb_size" not in kwargs and "pre_fc1_weight" in arg_params:
                kwargs["emb_size"] = int(arg_params["pre_fc1_weight"].shape[0])
            net = cls(network, **kwargs)
        net.set_params(arg_params, aux_params, ctx=ctx)
        return net


def frozen_tail(teacher, stage_index):
    """The teacher after stage ``stage_index + 1`` (0..3) as a frozen block.

    The returned ``SymbolBlock`` maps a tensor of the shape of the teacher's stage
    ``stage_index + 1`` output (e.g. 256x14x14 for stage 3 of an r-net at 112) to the
    teacher's embedding: ``tail(F)`` is ShrinkTeaNet's [T_{i+1} o ... o T_n](F) of
    Eq. (6).  ``stage_index=None`` freezes the whole teacher (input: images).
    Parameters are the teacher's own ``Parameter`` objects (shared by name),
    set to ``grad_req='null'``; BatchNorm uses the global statistics and Dropout is
    off, so the result does not depend on the autograd training flag.  Per-channel
    PReLUs run as ``freeze_symbol``'s exact depthwise form (the slopes' shapes come
    from the teacher's parameters).
    """
    if not isinstance(teacher, EmbeddingNet) or teacher.split is None:
        raise ValueError("frozen_tail: the teacher must be an EmbeddingNet built from a network name")
    if stage_index is None:
        sym, var = teacher.split.full, mx.sym.var("data", dtype="float32")
    else:
        if stage_index not in (0, 1, 2, 3):
            raise ValueError(f"frozen_tail: stage_index must be 0..3 or None, got {stage_index!r}")
        sym = teacher.split.tails[stage_index]
        var = mx.sym.var(teacher.split.tail_inputs[stage_index], dtype="float32")
    params = teacher.collect_params()
    shapes = {name: p.shape for name, p in params.items() if p.shape}
    tail = gluon.SymbolBlock(freeze_symbol(sym, shapes), var, params=params)
    for param in tail.collect_params().values():
        param.grad_req = "null"
    return tail


def materialize(net, image_size, ctx=None):
    """Finish Gluon's deferred initialisation of ``net`` with one zero image (inference
    mode, so no BatchNorm statistic moves), so that every parameter has its shape."""
    with mx.autograd.pause(train_mode=False):
        net(mx.nd.zeros((1, 3, int(image_size), int(image_size)), ctx=ctx or mx.cpu()))


def context_list(ctx):
    """``ctx`` as a list of contexts: one context, a list or tuple of them, or None for the CPU."""
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
