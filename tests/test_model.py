"""Gluon wrappers, frozen teacher tails and InsightFace-layout checkpoints (tiny networks, 32x32)."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from shrinkteanet import symbols

from shrinkteanet.symbols import measure
from shrinkteanet.core.errors import InputError
from shrinkteanet.model.checkpoint import load_checkpoint, save_checkpoint
from shrinkteanet.model.network import EmbeddingNet, frozen_tail
from shrinkteanet.model.rewrites import freeze_symbol

SIZE = 32
EMB = 16
TINY = {
    "r18": dict(units=(1, 1, 1, 1), filters=(4, 4, 8, 8, 16)),
    "mfn": dict(blocks=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32)),
    "mfnr": dict(blocks=(2, 1, 1, 1), filters=(8, 8, 16, 32, 32)),
    "mv1": dict(multiplier=0.125, blocks=(1, 1, 1, 1)),
    "mv2": dict(multiplier=0.25, blocks=(1, 1, 1, 1, 1, 1, 1), last_channels=16),
}


def images(n=2, seed=0):
    return mx.nd.array(np.random.RandomState(seed).uniform(0, 255, (n, 3, SIZE, SIZE)))


def randomize(net, seed=0):
    """Non-trivial values everywhere (BN statistics and scales included), so that frozen-BN
    and train/inference differences would show."""
    rng = np.random.RandomState(seed)
    for name, p in sorted(net.collect_params().items()):
        shape = p.shape
        if name == "fc1_gamma":
            value = np.ones(shape)  # fix_gamma=True: MXNet keeps (and writes) 1 there
        elif name.endswith(("_moving_var", "_gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_moving_mean", "_beta", "_bias")):
            value = rng.uniform(-0.2, 0.2, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        p.set_data(mx.nd.array(value, dtype=p.dtype))


def assert_close(a, b, rel=1e-5):
    """Equal up to float32 rounding of a different kernel path (MKLDNN fused vs plain
    executor, BatchNorm with use_global_stats): max abs diff within ``rel`` of the scale."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rel * np.abs(b).max(), (np.abs(a - b).max(), np.abs(b).max())


def make_net(network, with_taps=True, seed=0, **extra):
    net = EmbeddingNet(network, emb_size=EMB, with_taps=with_taps, image_size=SIZE, **TINY[network], **extra)
    net.initialize(mx.init.Xavier())
    net(images(1))  # finish deferred init
    randomize(net, seed)
    return net


@pytest.fixture(scope="module")
def nets():
    return {name: make_net(name) for name in TINY}


# --------------------------------------------------------------- forward / taps
@pytest.mark.parametrize("network", list(TINY))
def test_forward_shapes_and_taps(nets, network):
    net = nets[network]
    out = net(images(3))
    assert len(out) == 5
    assert out[0].shape == (3, EMB)
    expected = net.split.stage_shapes(SIZE)
    assert [tuple(o.shape[1:]) for o in out[1:]] == expected
    assert [s[1:] for s in expected] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_embeddingnet_matches_executor_and_hybridize(nets):
    """The Gluon block computes what MXNet's executor computes on the plain fc1 symbol."""
    net = nets["r18"]
    x = images(2, seed=3)
    emb = net(x)[0].asnumpy()
    arg_params, aux_params = net.get_params()
    sym = symbols.get_symbol("r18", EMB, image_size=SIZE, **TINY["r18"])
    exe = sym.bind(mx.cpu(), dict(arg_params, data=x), aux_states=aux_params, grad_req="null")
    ref = exe.forward(is_train=False)[0].asnumpy()
    assert_close(emb, ref)
    hyb = make_net("r18", with_taps=False)
    hyb.hybridize()
    out = hyb(x).asnumpy()
    assert_close(out, ref)


def test_default_initializers_follow_insightface():
    net = EmbeddingNet("mfn", emb_size=EMB, image_size=SIZE, **TINY["mfn"])
    net.initialize(mx.init.Xavier())
    net(images(1))
    params = net.collect_params()
    assert np.all(params["conv_1_batchnorm_gamma"].data().asnumpy() == 1)
    assert np.all(params["conv_1_relu_gamma"].data().asnumpy() == 1)
    assert np.all(params["conv_1_batchnorm_beta"].data().asnumpy() == 0)
    assert np.all(params["fc1_moving_var"].data().asnumpy() == 1)
    assert np.all(params["pre_fc1_bias"].data().asnumpy() == 0)
    assert params["pre_fc1_weight"].data().asnumpy().std() > 0


def test_fp16_parameters(tmp_path):
    """fp16 option: conv weights float16, BatchNorm float32; the checkpoint is the plain
    float32 fc1 network (CPU MXNet has no fp16 GEMM, so no forward here)."""
    net = EmbeddingNet("mfn", emb_size=EMB, dtype="float16", image_size=SIZE, **TINY["mfn"])
    params = net.collect_params()
    assert params["conv_1_conv2d_weight"].dtype == np.float16
    assert params["conv_1_batchnorm_gamma"].dtype == np.float32
    assert params["conv_1_batchnorm_moving_var"].dtype == np.float32
    net.initialize(mx.init.Xavier())  # shapes are known without a forward pass
    w16 = params["conv_1_conv2d_weight"].data().asnumpy()
    net.save_checkpoint(str(tmp_path / "half"), 1)
    sym, arg, _ = load_checkpoint(str(tmp_path / "half"), 1)
    assert "Cast" not in sym.tojson()
    assert arg["conv_1_conv2d_weight"].dtype == np.float32
    assert np.array_equal(arg["conv_1_conv2d_weight"].asnumpy(), w16.astype(np.float32))
    with pytest.raises(ValueError, match="network name"):
        EmbeddingNet(symbols.get_symbol("mfn", EMB, image_size=SIZE, **TINY["mfn"]), dtype="float16")


# --------------------------------------------------------------- frozen tails
@pytest.mark.parametrize("network", list(TINY))
def test_tail_after_stage_equals_full_teacher(nets, network):
    teacher = nets[network]
    x = images(2, seed=1)
    out = teacher(x)
    emb = out[0].asnumpy()
    for i in range(4):
        tail = frozen_tail(teacher, i)
        y = tail(out[i + 1]).asnumpy()
        assert np.abs(y - emb).max() < 1e-5, (network, i)


def test_tail_is_frozen_in_training_mode(nets):
    """Under autograd in training mode the tail still uses the global BN statistics (and no
    dropout): same output as inference, running statistics untouched."""
    teacher = nets["r18"]
    x = images(2, seed=2)
    out = teacher(x)
    tail = frozen_tail(teacher, 1)
    before = {n: p.data().asnumpy().copy() for n, p in teacher.collect_params().items()}
    feat = out[2].copy()
    with autograd.record(train_mode=True):
        y = tail(feat)
    assert_close(y.asnumpy(), out[0].asnumpy())
    for n, p in teacher.collect_params().items():
        assert np.array_equal(p.data().asnumpy(), before[n]), n
    # the unfrozen symbol in training mode would differ (batch statistics, dropout)
    split = teacher.split
    plain = gluon.SymbolBlock(split.tails[1], mx.sym.var(split.tail_inputs[1], dtype="float32"),
                              params=teacher.collect_params())
    with autograd.record(train_mode=True):
        z = plain(feat)
    assert np.abs(z.asnumpy() - out[0].asnumpy()).max() > 1e-2 * np.abs(out[0].asnumpy()).max()


def test_whole_teacher_frozen(nets):
    teacher = nets["mfn"]
    x = images(2, seed=4)
    ref = teacher(x)[0].asnumpy()
    frozen = frozen_tail(teacher, None)
    with autograd.record(train_mode=True):
        y = frozen(x)
    assert_close(y.asnumpy(), ref)


def test_gradient_reaches_tail_input_only():
    teacher = make_net("r18", seed=5)
    out = teacher(images(2, seed=5))
    for i in range(4):
        tail = frozen_tail(teacher, i)
        feat = out[i + 1].copy()
        feat.attach_grad()
        with autograd.record():
            y = tail(feat)
            loss = (y * y).sum()
        loss.backward()
        assert np.abs(feat.grad.asnumpy()).sum() > 0
        for name, p in tail.collect_params().items():
            assert p.grad_req == "null", name
            with pytest.raises(RuntimeError):
                p.grad()


def test_tail_gradient_matches_finite_differences():
    """The last tail (BN -> FC -> BN, affine with frozen BN) has gradient J^T r; check it
    against central differences on a few input coordinates."""
    teacher = make_net("r18", seed=6)
    out = teacher(images(1, seed=6))
    tail = frozen_tail(teacher, 3)
    feat = out[4].copy()
    r = mx.nd.array(np.random.RandomState(6).normal(size=(1, EMB)))
    feat.attach_grad()
    with autograd.record():
        loss = (tail(feat) * r).sum()
    loss.backward()
    grad = feat.grad.asnumpy().ravel()
    base = feat.asnumpy()
    for k in (0, 5, 17, base.size - 1):
        step = np.zeros(base.size, np.float32)
        step[k] = 0.5
        plus = mx.nd.array(base + step.reshape(base.shape))
        minus = mx.nd.array(base - step.reshape(base.shape))
        fd = ((tail(plus) * r).sum() - (tail(minus) * r).sum()).asscalar() / 1.0
        assert fd == pytest.approx(grad[k], rel=1e-3, abs=1e-4)


def test_frozen_tail_errors(nets):
    with pytest.raises(ValueError, match="0..3"):
        frozen_tail(nets["mfn"], 4)
    plain = EmbeddingNet(symbols.get_symbol("mfn", EMB, image_size=SIZE, **TINY["mfn"]))
    with pytest.raises(ValueError, match="network name"):
        frozen_tail(plain, 0)


def test_freeze_symbol_rewrites_bn_and_dropout():
    sym = freeze_symbol(symbols.get_symbol("r18", EMB, **TINY["r18"]))
    nodes = json.loads(sym.tojson())["nodes"]
    bns = [n for n in nodes if n["op"] == "BatchNorm"]
    assert bns and all(n["attrs"]["use_global_stats"] == "True" for n in bns)
    assert not any(n["op"] == "Dropout" for n in nodes)
    assert sym.list_arguments() == symbols.get_symbol("r18", EMB, **TINY["r18"]).list_arguments()


@pytest.mark.parametrize("network", ["r18", "mfn"])
def test_freeze_symbol_prelu_rewrite_is_exact(nets, network):
    """With the slopes' shapes, freeze_symbol computes every PReLU as relu + depthwise conv
    (no LeakyReLU left, same arguments); the output stays bit-equal to the PReLU graph and
    the gradient to the input equal to float32 rounding (a speed fix for the teacher tails)."""
    teacher = nets[network]
    shapes = {n: p.shape for n, p in teacher.collect_params().items()}
    out = teacher(images(2, seed=7))
    r = mx.nd.array(np.random.RandomState(7).normal(size=(2, EMB)))
    for i in (0, 2, None):
        sym = teacher.split.full if i is None else teacher.split.tails[i]
        name = "data" if i is None else teacher.split.tail_inputs[i]
        fast, plain = freeze_symbol(sym, shapes), freeze_symbol(sym)
        ops = [n["op"] for n in json.loads(fast.tojson())["nodes"]]
        assert "LeakyReLU" not in ops and "LeakyReLU" in [n["op"] for n in json.loads(plain.tojson())["nodes"]]
        assert fast.list_arguments() == plain.list_arguments() == sym.list_arguments()
        x = images(2, seed=7) if i is None else out[i + 1]
        res = []
        for s in (fast, plain):
            blk = gluon.SymbolBlock(s, mx.sym.var(name, dtype="float32"), params=teacher.collect_params())
            blk.hybridize(static_alloc=True, static_shape=True)
            feat = x.copy()
            feat.attach_grad()
            with autograd.record():
                loss = (blk(feat) * r).sum()
            loss.backward()
            res.append((loss.asscalar(), feat.grad.asnumpy()))
        assert res[0][0] == res[1][0], (network, i)
        # the gradient kernels downstream may see another memory layout: float32 rounding only
        assert_close(res[0][1], res[1][1], rel=1e-6)
        assert np.abs(res[0][1]).max() > 0


# --------------------------------------------------------------- checkpoints
def random_params(sym, seed=0):
    rng = np.random.RandomState(seed)
    arg, aux = measure.param_shapes(sym, SIZE)
    arg_params = {k: mx.nd.array(rng.normal(0, 1.0 / np.sqrt(max(1, np.prod(s[1:]))), size=s))
                  for k, s in arg.items() if k != "data"}
    aux_params = {k: mx.nd.array(rng.uniform(0.5, 1.5, s)) for k, s in aux.items()}
    return arg_params, aux_params


def test_checkpoint_roundtrip_bit_exact(tmp_path):
    sym = symbols.get_symbol("mfn", EMB, image_size=SIZE, **TINY["mfn"])
    arg_params, aux_params = random_params(sym)
    prefix = str(tmp_path / "ours" / "model")
    sym_path, params_path = save_checkpoint(prefix, 7, sym, arg_params, aux_params)
    assert params_path.endswith("model-0007.params") and os.path.isfile(sym_path)
    assert sorted(os.listdir(tmp_path / "ours")) == ["model-0007.params", "model-symbol.json"]  # no temp files
    sym2, arg2, aux2 = load_checkpoint(prefix, 7)
    assert sym2.tojson() == sym.tojson()
    assert arg2.keys() == arg_params.keys() and aux2.keys() == aux_params.keys()
    for src, dst in ((arg_params, arg2), (aux_params, aux2)):
        for k in src:
            a, b = src[k].asnumpy(), dst[k].asnumpy()
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32)), k
    # the files are byte for byte what mx.model.save_checkpoint writes (InsightFace's layout)
    ref_prefix = str(tmp_path / "ref")
    mx.model.save_checkpoint(ref_prefix, 7, sym, arg_params, aux_params)
    assert open(params_path, "rb").read() == open(ref_prefix + "-0007.params", "rb").read()
    assert open(sym_path).read() == open(ref_prefix + "-symbol.json").read()
    # saving what was loaded reproduces the same bytes
    save_checkpoint(str(tmp_path / "again"), 7, sym2, arg2, aux2)
    assert open(str(tmp_path / "again") + "-0007.params", "rb").read() == open(params_path, "rb").read()


def test_save_failure_leaves_no_file(tmp_path):
    sym = symbols.get_symbol("mfn", EMB, image_size=SIZE, **TINY["mfn"])
    with pytest.raises(Exception):
        save_checkpoint(str(tmp_path / "m"), 1, sym, {"w": np.zeros(3)}, {})  # numpy, not NDArray
    assert not os.path.exists(tmp_path / "m-0001.params")
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def insightface_training_checkpoint(prefix, network, num_classes=5):
    """A checkpoint as InsightFace's train.py saves it without ckpt_embedding:
    fc1 -> fc7 (no bias) -> SoftmaxOutput, params with fc7_weight."""
    fc1 = symbols.get_symbol(network, EMB, image_size=SIZE, **TINY[network])
    fc7 = mx.sym.FullyConnected(fc1, num_hidden=num_classes, no_bias=True, name="fc7")
    train_sym = mx.sym.SoftmaxOutput(fc7, name="softmax")
    arg_params, aux_params = random_params(fc1, seed=11)
    arg_params["fc7_weight"] = mx.nd.array(np.random.RandomState(1).normal(size=(num_classes, EMB)))
    mx.model.save_checkpoint(prefix, 1, train_sym, arg_params, aux_params)
    return fc1, arg_params, aux_params


def test_load_training_symbol_cuts_at_fc1(tmp_path):
    prefix = str(tmp_path / "train")
    fc1, arg_params, aux_params = insightface_training_checkpoint(prefix, "mfn")
    sym, arg, aux = load_checkpoint(prefix, 1)
    assert sym.list_outputs() == ["fc1_output"]
    assert "fc7_weight" not in arg and "softmax_label" not in sym.list_arguments()
    assert set(arg) == set(fc1.list_arguments()) - {"data"}
    _, arg_all, _ = load_checkpoint(prefix, 1, keep_extra=True)
    assert "fc7_weight" in arg_all
    # loads by name into the network built from shrinkteanet.symbols, emb size read from pre_fc1
    net = EmbeddingNet.from_checkpoint(prefix, 1, network="mfn", image_size=SIZE, **TINY["mfn"])
    assert net.emb_size == EMB
    x = images(2, seed=9)
    exe = sym.bind(mx.cpu(), dict(arg, data=x), aux_states=aux, grad_req="null")
    ref = exe.forward(is_train=False)[0].asnumpy()
    assert_close(net(x).asnumpy(), ref)
    # and from the bare symbol (no network name)
    plain = EmbeddingNet.from_checkpoint(prefix, 1)
    assert_close(plain(x).asnumpy(), ref)


def test_embeddingnet_checkpoint_roundtrip(tmp_path, nets):
    net = nets["mv2"]
    net.save_checkpoint(str(tmp_path / "mv2"), 3)
    loaded = EmbeddingNet.from_checkpoint(str(tmp_path / "mv2"), 3, network="mv2", with_taps=True,
                                          image_size=SIZE, **TINY["mv2"])
    for name, p in net.collect_params().items():
        assert np.array_equal(p.data().asnumpy(), loaded.collect_params()[name].data().asnumpy()), name
    x = images(1)
    assert np.array_equal(net(x)[0].asnumpy(), loaded(x)[0].asnumpy())
    # taps located by name in a symbol loaded from disk
    sym, arg, aux = load_checkpoint(str(tmp_path / "mv2"), 3)
    tapped = EmbeddingNet(sym, with_taps=True, tap_outputs=net.split.tap_outputs)
    tapped.set_params(arg, aux)
    out = tapped(x)
    assert [o.shape for o in out] == [o.shape for o in net(x)]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(InputError, match="nope-symbol.json"):
        load_checkpoint(str(tmp_path / "nope"), 1)
    # a symbol without fc1
    data = mx.sym.var("data")
    sym = mx.sym.FullyConnected(data, num_hidden=3, name="fc")
    mx.model.save_checkpoint(str(tmp_path / "nofc1"), 1, sym,
                             {"fc_weight": mx.nd.zeros((3, 12)), "fc_bias": mx.nd.zeros(3)}, {})
    with pytest.raises(InputError, match="fc1_output"):
        load_checkpoint(str(tmp_path / "nofc1"), 1)
    # parameters missing
    fc1 = symbols.get_symbol("mfn", EMB, image_size=SIZE, **TINY["mfn"])
    arg, aux = random_params(fc1)
    arg.pop("pre_fc1_weight")
    mx.model.save_checkpoint(str(tmp_path / "partial"), 1, fc1, arg, aux)
    with pytest.raises(InputError, match="missing"):
        load_checkpoint(str(tmp_path / "partial"), 1)
    # not a parameter file
    (tmp_path / "junk-0001.params").write_bytes(b"not mxnet")
    fc1.save(str(tmp_path / "junk-symbol.json"))
    with pytest.raises(InputError, match="junk-0001.params"):
        load_checkpoint(str(tmp_path / "junk"), 1)


# --------------------------------------------------------------- MKLDNN guard
def module_forward_three_times(sym, arg, aux):
    mod = mx.mod.Module(sym, context=mx.cpu(), label_names=None)
    mod.bind(data_shapes=[("data", (2, 3, SIZE, SIZE))], for_training=False)
    mod.set_params(arg, aux)
    outs = []
    for seed in range(3):
        mod.forward(mx.io.DataBatch([images(2, seed)]), is_train=False)
        outs.append(mod.get_outputs()[0].asnumpy())
    return outs


def test_mkldnn_safe_inserts_flatten_between_bn_and_fc():
    """InsightFace's GDC head (BN -> FC) breaks MXNet 1.9.1 + MKLDNN on the second forward;
    the loader inserts a Flatten, which keeps names and results."""
    from shrinkteanet.model.rewrites import mkldnn_safe

    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=4, kernel=(SIZE, SIZE), num_group=1, no_bias=True, name="gdc")
    x = mx.sym.BatchNorm(x, fix_gamma=False, name="gdc_bn")
    x = mx.sym.FullyConnected(x, num_hidden=3, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(x, fix_gamma=True, name="fc1")
    safe = mkldnn_safe(fc1)
    nodes = json.loads(safe.tojson())["nodes"]
    assert [n["op"] for n in nodes].count("Flatten") == 1
    fc = next(n for n in nodes if n["op"] == "FullyConnected")
    flat = nodes[fc["inputs"][0][0]]
    assert flat["op"] == "Flatten" and nodes[flat["inputs"][0][0]]["name"] == "gdc_bn"
    assert safe.list_arguments() == fc1.list_arguments()
    assert safe.list_auxiliary_states() == fc1.list_auxiliary_states()
    arg, aux = random_params(fc1)
    outs = module_forward_three_times(safe, arg, aux)
    exe = fc1.bind(mx.cpu(), dict(arg, data=images(2, 2)), aux_states=aux, grad_req="null")
    assert_close(outs[2], exe.forward(is_train=False)[0].asnumpy())
    # graphs without the pattern are returned as they are
    r18 = symbols.get_symbol("r18", EMB, **TINY["r18"])
    assert mkldnn_safe(r18).tojson() == r18.tojson()


@pytest.mark.parametrize("network", ["mfn", "mv2"])
def test_gdc_networks_survive_repeated_module_forward(network):
    sym = symbols.get_symbol(network, EMB, image_size=SIZE, **TINY[network])
    arg, aux = random_params(sym)
    outs = module_forward_three_times(sym, arg, aux)
    assert all(o.shape == (2, EMB) and np.isfinite(o).all() for o in outs)


def test_prelu_as_conv_same_function_names_and_gradients():
    """The training graph's PReLU rewrite (model.prelu_as_depthwise): the same forward bit for bit,
    the same parameter names, the same gradients up to float32 summation order, and the checkpoint
    symbol keeps InsightFace's LeakyReLU(prelu) nodes.  The reference is the stock PReLU graph
    *without* taps: with the taps as extra outputs, MXNet 1.9.1's PReLU gives wrong slope
    gradients at the tapped layers (found while checking this rewrite against finite differences;
    docs/benchmarks.md), which the rewrite does not share."""
    opts = dict(blocks=(1, 1, 1, 1), filters=(8, 16, 16, 32, 32), image_size=32)
    ref = EmbeddingNet("mfnr", 16, with_taps=False, prelu_as_conv=False, **opts)
    fast = EmbeddingNet("mfnr", 16, with_taps=True, prelu_as_conv=True, **opts)
    assert list(ref.collect_params().keys()) == list(fast.collect_params().keys())
    ref.initialize(mx.init.Xavier())
    arg, aux = ref.get_params()
    rng = np.random.RandomState(3)
    arg = {k: mx.nd.array(rng.uniform(0.05, 0.5, v.shape)) if k.endswith("relu_gamma") else v
           for k, v in arg.items()}  # slopes of their own per channel
    ref.set_params(arg, aux)
    fast.set_params(arg, aux)
    x = mx.nd.array(rng.uniform(0, 255, (4, 3, 32, 32)))
    outs, grads = [], []
    for net in (ref, fast):
        xi = x.copy()
        xi.attach_grad()
        with autograd.record():
            out = net(xi)
            emb = out[0] if isinstance(out, (list, tuple)) else out
            loss = (emb * emb).sum()
        loss.backward()
        outs.append(emb.asnumpy())
        grads.append((xi.grad.asnumpy(), {k: p.grad().asnumpy() for k, p in net.collect_params().items()
                                         if k.endswith("relu_gamma")}))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-3, atol=1e-5 * np.abs(grads[0][0]).max())
    assert len(grads[0][1]) > 5 and set(grads[0][1]) == set(grads[1][1])
    for k in grads[0][1]:
        np.testing.assert_allclose(grads[0][1][k], grads[1][1][k], rtol=1e-3, atol=1e-4 * np.abs(grads[0][1][k]).max())
    ops = {n["op"] for n in json.loads(fast.embedding_symbol.tojson())["nodes"]}
    assert "LeakyReLU" in ops  # the checkpoint symbol is still InsightFace's
