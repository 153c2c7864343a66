"""Embedder: flip fusion and the fc1 BatchNorm(fix_gamma) path, run repeatedly, against numpy."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny():
    import mxnet as mx

    data = mx.sym.var("data")
    x = (data - 127.5) * 0.0078125
    x = mx.sym.Flatten(x)
    x = mx.sym.FullyConnected(x, num_hidden=8, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="fc1")  # InsightFace's 'E' output unit
    rs = np.random.RandomState(0)
    w = rs.randn(8, 3 * 8 * 8).astype(np.float32) * 0.05
    b = rs.randn(8).astype(np.float32)
    beta = rs.randn(8).astype(np.float32)
    mean = rs.randn(8).astype(np.float32)
    var = rs.uniform(0.5, 2.0, 8).astype(np.float32)
    arg = {"pre_fc1_weight": mx.nd.array(w), "pre_fc1_bias": mx.nd.array(b),
           "fc1_gamma": mx.nd.array(np.full(8, 3.0, np.float32)), "fc1_beta": mx.nd.array(beta)}
    aux = {"fc1_moving_mean": mx.nd.array(mean), "fc1_moving_var": mx.nd.array(var)}

    def ref(img):  # gamma is fixed to 1 whatever is stored
        x = ((img.transpose(0, 3, 1, 2).astype(np.float64) - 127.5) * 0.0078125).reshape(len(img), -1)
        y = x @ w.T + b
        return (y - mean) / np.sqrt(var + 2e-5) + beta

    return (fc1, arg, aux), ref


def test_embed_twice_matches_numpy_with_flip(tiny):
    from shrinkteanet.eval.embed import Embedder

    model, ref = tiny
    e = Embedder(model, batch_size=4, image_size=8, mkldnn=True)
    rs = np.random.RandomState(1)
    imgs = rs.randint(0, 256, (10, 8, 8, 3)).astype(np.uint8)  # 10 = 2 full batches + a padded one
    want = ref(imgs) + ref(imgs[:, :, ::-1])
    first = e.embed(imgs)
    second = e.embed(imgs)          # the second forward is where MXNet 1.9.1 MKLDNN used to fail
    third = e.embed(imgs[:3])       # another batch count, same static shape
    np.testing.assert_allclose(first, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[:3], third)
    a, b = e.embed_parts(imgs)
    np.testing.assert_allclose(a, ref(imgs), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e.embed(imgs, flip=False), ref(imgs), rtol=1e-4, atol=1e-4)


def test_checkpoint_with_fc7_is_cut_at_fc1(tiny, tmp_path):
    import mxnet as mx

    from shrinkteanet.eval.embed import Embedder

    (fc1, arg, aux), ref = tiny
    fc7 = mx.sym.FullyConnected(fc1, num_hidden=5, no_bias=True, name="fc7")
    arg = dict(arg, fc7_weight=mx.nd.zeros((5, 8)))
    prefix = str(tmp_path / "m")
    mx.model.save_checkpoint(prefix, 3, fc7, arg, aux)
    e = Embedder((prefix, 3), batch_size=2, image_size=8)
    img = np.random.RandomState(2).randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(e.embed(img, flip=False), ref(img), rtol=1e-4, atol=1e-4)
