"""Running any of the deploy graphs (fp32, MKLDNN-fused, INT8) on CPU with a fixed batch
shape, and the checks every exported model goes through: a second forward that must
repeat the first (MXNet 1.9.1's MKLDNN "can't generate TBlob" failure shows up only
there) and InsightFace's ``.bin`` verification accuracy.
"""
import os

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.eval.embed import check_input_size, require_finite


class Runner:
    """Fixed-batch ``Module`` over any of the deploy graphs (fp32, fused, INT8).

    The last partial batch is padded, so the executor never reshapes.
    ``subgraph=False`` binds with ``MXNET_SUBGRAPH_BACKEND=NONE`` (MXNet 1.9.1 CPU
    otherwise fuses with MKLDNN at bind time by default): the unfused baseline."""

    def __init__(self, sym, arg_params, aux_params, *, batch_size=32, image_size=IMAGE_SIZE, subgraph=True,
                 name=None):
        import mxnet as mx

        # ``name`` (the checkpoint, for messages): every batch's outputs must then be finite
        # (``eval.embed.require_finite``, the check the evaluation embedder makes too)
        self.name, self._model = name, (sym, arg_params, aux_params)
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
            y = self.forward(b)[:n]
            if self.name:
                require_finite(y, self.name, model=self._model, batch=b[:n])
            out.append(y)
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
