"""A toy method, loader and job for driving ``training.fit.Fit`` phase by phase on CPU contexts.

``ToyMethod``: ``z_i = V (W x_i)`` (no BatchNorm, an ``fc7_weight`` classifier ``V``), per-sample
loss ``0.5 * ||z_i||^2`` (or a custom function of W for the AMP tests).  Its gradients have a
closed form (``numpy_grads``), so a training step can be checked against numpy."""
from collections import namedtuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from shrinkteanet.training import config, fit, train

ToyBatch = namedtuple("ToyBatch", "data label index flipped")


class ToyMethod(gluon.Block):
    """``forward(data (n, k), label) -> {"toy": (n,)}``; ``kind='sqrt'``: loss ``sum(sqrt(W))``
    per sample (finite at W=0, infinite gradient: every AMP step overflows)."""

    def __init__(self, k=3, d=4, c=5, kind="quadratic", seed=0):
        super().__init__(prefix="")
        rng = np.random.RandomState(seed)
        self.kind = kind
        with self.name_scope():
            self.w = self.params.get("emb_weight", shape=(d, k))
            self.v = self.params.get("fc7_weight", shape=(c, d))
        self.init_w = rng.randn(d, k).astype(np.float32) * (0 if kind == "sqrt" else 1)
        self.init_v = rng.randn(c, d).astype(np.float32)

    def trainable_params(self):
        return dict(self.collect_params().items())

    def forward(self, data, label):
        w, v = self.w.data(data.context), self.v.data(data.context)
        if self.kind == "sqrt":
            per = mx.nd.sum(mx.nd.sqrt(w)) + mx.nd.sum(v) * 0
            return {"toy": mx.nd.broadcast_mul(mx.nd.ones_like(data[:, 0]), per.reshape((1,)))}
        z = mx.nd.dot(mx.nd.dot(data, w, transpose_b=True), v, transpose_b=True)
        return {"toy": 0.5 * mx.nd.sum(z * z, axis=1)}


def numpy_grads(w, v, x):
    """Summed gradients of ``sum_i 0.5 ||V W x_i||^2``: (dW, dV)."""
    h = x @ w.T  # (n, d)
    z = h @ v.T  # (n, c)
    return v.T @ z.T @ x, z.T @ h


class ToyLoader:
    """Fixed batches ``batches`` (list of (n, k) float32), each its own step."""

    def __init__(self, batches):
        self.batches = batches
        self.batch_size = len(batches[0])
        self.image_size = ()

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start_batch=0):
        for x in self.batches[start_batch:]:
            n = len(x)
            yield ToyBatch(x, np.zeros(n, np.int64), np.arange(n), np.zeros(n, bool))


def toy_fit(method, batches, ctx_list, *extra):
    """A ``Fit`` of ``method`` (parameters set to its ``init_*``) over ``batches`` on
    ``ctx_list`` with the ``device`` kvstore, phases up to the first step done."""
    cfg = config.config_by_name("mfnr_self", ["lr_schedule=constant", "frequent=1000", "verify_every=0",
                                              f"batch_size={len(batches[0])}", "kvstore=device", *extra])
    cfg.out = ""
    method.initialize(ctx=ctx_list)
    method.w.set_data(mx.nd.array(method.init_w))
    method.v.set_data(mx.nd.array(method.init_v))
    f = fit.Fit(method, ToyLoader(batches), cfg, train.make_job(cfg, ctx_list))
    f.build_trainer()
    f.start(False)
    f.open_hooks()
    return f
