"""--fp16 (MXNet AMP): every method's training graph passes MXNet's type inference with float16
casts in the student, the teacher and its tails; the margin heads stay float32; AMP's loss
scale sits inside the recorded graph; a run that only overflows stops.

MXNet 1.9.1's CPU has no float16 GEMM ("FP16 gemm on cpu not implemented"), so the networks'
float16 forward cannot run here: the graph checks stand in for it, and the loop's AMP path runs
on a toy method of elementwise operators (which AMP leaves in float32) on two CPU contexts."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.contrib import amp

from _toy_fit import ToyMethod, numpy_grads, toy_fit
from shrinkteanet.model.rewrites import count_amp_casts
from shrinkteanet.study import tiny
from shrinkteanet.training import config, fit

amp.init()  # process-wide (run_isolated gives this file its own process)
TWO = [mx.cpu(0), mx.cpu(1)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    data = tiny.write_tiny_set(root / "set", with_bin=False)
    return data, str(root / "teacher" / "model") + ",1"


def _teacher_checkpoint(data, prefix):
    """A tiny r18 checkpoint with random weights and an fc7 (AMP cannot train one on the CPU)."""
    from shrinkteanet import symbols
    from shrinkteanet.model.checkpoint import save_checkpoint

    opts = eval(tiny.TINY_TEACHER.split("=", 1)[1])
    sym = symbols.get_symbol("r18", 32, image_size=32, **opts)
    sym = mx.sym.load_json(sym.tojson())  # the float32 checkpoint graph
    arg, aux = tiny.random_params(sym, 32)
    arg["fc7_weight"] = mx.nd.array(np.random.RandomState(0).randn(8, 32))
    save_checkpoint(prefix, 1, sym, arg, aux)


def _out_types(sym, data_name, data_dtype="float32"):
    kw = {n: "float32" for n in sym.list_arguments()}
    kw[data_name] = data_dtype
    _, out, _ = sym.infer_type(**kw)
    return [np.dtype(t).name for t in out]


def _block_graph(block):
    inputs, out = block._cached_graph
    return out, inputs[0].name


@pytest.mark.parametrize("name", ["mfnr_self", "mfnr_stn", "mfnr_kd", "mfnr_margin", "mfnr_hint"])
def test_fp16_training_graphs_type_check_with_float16_casts(teacher, name):
    from shrinkteanet.methods.base.assembler import build_method
    from shrinkteanet.training.networks import build_networks

    data, ckpt = teacher
    _teacher_checkpoint(data, ckpt.split(",")[0])
    cfg = config.config_by_name(name, tiny.train_overrides(data, None, f"teacher={ckpt}", "fp16=1", "num_classes=8",
                                                           "image_size=32"))
    student, t, fc7 = build_networks(cfg, ctx=TWO)
    with pytest.raises(mx.base.MXNetError, match="FP16 gemm on cpu"):
        mx.nd.waitall()  # the materialising forward: float16 convolutions, which the CPU lacks
    method = build_method(cfg, student, t, num_classes=8, teacher_fc7=fc7, ctx=TWO)
    sym, inp = _block_graph(student)
    assert count_amp_casts(sym) >= 20 and set(_out_types(sym, inp)) == {"float16"}
    fr = method._frozen
    frozen = [b for b in [fr.full, fr.teacher] + list(fr.tails.values()) if b is not None]
    assert bool(frozen) == (name != "mfnr_self") and (len(fr.tails) == 3) == (name == "mfnr_stn")
    for block in frozen:
        sym, inp = _block_graph(block)
        assert count_amp_casts(sym) >= 5 and "float16" in _out_types(sym, inp), block.name
    for adapter in method.adapters.values():
        assert _out_types(adapter(mx.sym.var("x")), "x", "float16") == ["float16"]
    head = method._classifier.head
    e, lab = mx.sym.var("emb"), mx.sym.var("label")
    logits = head(e, lab, mx.sym.var("temb")) if method._classifier.with_teacher else head(e, lab)
    assert _out_types(logits, "emb", "float16") == ["float32"]  # the margin head stays float32
    assert "FullyConnected" not in logits.tojson(remove_amp_cast=False)


def test_amp_step_scales_the_loss_inside_the_graph_and_equals_numpy_sgd():
    rng = np.random.RandomState(5)
    batches = [rng.randn(4, 3).astype(np.float32)]
    f = toy_fit(ToyMethod(), batches, TWO, "lr=0.05", "momentum=0", "wd=0", "fp16=1")
    w, v = f.method.init_w.astype(np.float64), f.method.init_v.astype(np.float64)
    ok, values, _ = f.update(next(iter(f.loader.epoch(0))))  # crashed at step 1 ("not in a computational graph")
    assert ok and f.trainer._amp_loss_scaler.loss_scale == 2.0 ** 16
    gw, gv = numpy_grads(w, v, batches[0].astype(np.float64))
    for ctx in TWO:  # the loss scale cancels: the step is the float32 one
        np.testing.assert_allclose(f.method.w.data(ctx).asnumpy(), w - 0.05 * gw / 4, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f.method.v.data(ctx).asnumpy(), v - 0.05 * gv / 4, rtol=1e-5, atol=1e-6)
    f.monitor.close()


def test_a_run_that_only_overflows_is_counted_and_stopped():
    batches = [np.ones((4, 3), np.float32)] * 40
    f = toy_fit(ToyMethod(kind="sqrt"), batches, TWO, "lr=0.05", "fp16=1", "nan_guard=2")
    with pytest.raises(fit.NonFiniteLossError, match="fp16: gradients overflowed float16 in 19 consecutive"):
        for batch in f.loader.epoch(0):
            ok, _, _ = f.update(batch)
            assert not ok
    # AMP's scale search: 2**16 (twice: its new scale applies one step late) down to 2, then 2 more at <= 1
    assert f.guard.overflows == 19 and f.guard.skipped == 19
    assert np.all(f.method.w.data().asnumpy() == 0)  # never updated
    f.monitor.close()
