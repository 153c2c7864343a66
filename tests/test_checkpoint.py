"""shrinkteanet.model.checkpoint: the one reader/writer of InsightFace checkpoints (cut at fc1) and
of a training run's numbered files, written atomically (temp file, fsync, rename, fsync of the folder)."""
import os

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.finite import nonfinite_names
from shrinkteanet.model import checkpoint


def tiny_fc1():
    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), name="conv0")
    x = mx.sym.BatchNorm(x, name="bn0")
    x = mx.sym.Activation(x, act_type="relu", name="relu0")
    return mx.sym.FullyConnected(x, num_hidden=6, name="fc1")


def training_symbol(fc1, num_classes=5):
    """InsightFace's training graph: fc1 -> fc7 (no bias) -> SoftmaxOutput."""
    fc7 = mx.sym.FullyConnected(fc1, num_hidden=num_classes, no_bias=True, name="fc7")
    return mx.sym.SoftmaxOutput(fc7, name="softmax")


def random_params(sym, seed=0):
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 8, 8))
    arg = {k: mx.nd.array(rng.randn(*s)) for k, s in zip(sym.list_arguments(), arg_shapes)
           if k not in ("data", "softmax_label")}
    aux = {k: mx.nd.array(rng.uniform(0.5, 1.5, s)) for k, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return arg, aux


def bits(a):
    return a.asnumpy().view(np.uint32)


def test_roundtrip_of_a_training_symbol_cuts_at_fc1_with_the_same_arrays(tmp_path):
    fc1 = tiny_fc1()
    train_sym = training_symbol(fc1)
    arg, aux = random_params(train_sym)
    assert "fc7_weight" in arg
    prefix = str(tmp_path / "m")
    checkpoint.save_checkpoint(prefix, 4, train_sym, arg, aux)
    sym, arg2, aux2 = checkpoint.load_checkpoint(prefix, 4)
    assert sym.list_outputs() == ["fc1_output"]
    assert set(sym.list_arguments()) == set(fc1.list_arguments())
    assert set(arg2) == set(arg) - {"fc7_weight"} and set(aux2) == set(aux)
    for src, dst in ((arg, arg2), (aux, aux2)):
        for k in dst:
            assert np.array_equal(bits(src[k]), bits(dst[k])), k
    _, arg_all, _ = checkpoint.load_checkpoint(prefix, 4, keep_extra=True)
    assert np.array_equal(bits(arg_all["fc7_weight"]), bits(arg["fc7_weight"]))
    # the file is what mx.model writes and reads (InsightFace's layout)
    mx_sym, mx_arg, _ = mx.model.load_checkpoint(prefix, 4)
    assert mx_sym.list_outputs() == ["softmax_output"] and set(mx_arg) == set(arg)


def test_cut_at_embedding_keeps_an_fc1_symbol_and_refuses_one_without_fc1():
    fc1 = tiny_fc1()
    assert checkpoint.cut_at_embedding(fc1) is fc1
    assert checkpoint.cut_at_embedding(training_symbol(fc1)).list_outputs() == ["fc1_output"]
    with pytest.raises(InputError, match="m-symbol.json: no 'fc1_output'"):
        checkpoint.cut_at_embedding(mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=2, name="fc"),
                                    "m-symbol.json")


def test_the_writer_leaves_no_temp_file_and_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "m-0001.params")
    checkpoint.save_nd(path, {"a": mx.nd.ones((2,))})
    assert os.listdir(tmp_path) == ["m-0001.params"]
    before = open(path, "rb").read()

    def half_then_crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_by_name(path, half_then_crash)
    assert os.listdir(tmp_path) == ["m-0001.params"] and open(path, "rb").read() == before
    assert mx.nd.load(path)["a"].asnumpy().tolist() == [1.0, 1.0]


def test_the_writer_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = str(tmp_path / "m-0002.states")
    checkpoint.write_by_name(path, lambda tmp: open(tmp, "wb").write(b"x"))
    folder = os.path.realpath(str(tmp_path))
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and os.path.dirname(events[0][1]) == folder
    assert events[1][1] == path and events[2][1] == folder


class _Head(mx.gluon.HybridBlock):
    """fc1 of an embedding plus a margin head ``fc7``, named as the training checkpoint names them."""

    def __init__(self):
        super().__init__(prefix="")
        with self.name_scope():
            self.fc1 = mx.gluon.nn.Dense(3, in_units=4, prefix="fc1_")
            self.fc7 = mx.gluon.nn.Dense(2, in_units=3, use_bias=False, prefix="fc7_")
            self.adapter = mx.gluon.nn.Dense(3, in_units=3, use_bias=False, prefix="adapter_")

    def hybrid_forward(self, F, x):
        return self.fc7(self.adapter(self.fc1(x)))


def _train_one_step(net):
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 4))).sum()
    loss.backward()
    trainer.step(2)
    return trainer


def _checkpoint_parts(net):
    params = {k: p.data() for k, p in net.collect_params().items()}
    arg = {k: v for k, v in params.items() if k.startswith(("fc1", "fc7"))}
    head = {k: v for k, v in params.items() if k.startswith("adapter")}
    return arg, head


def test_checkpointer_keeps_the_last_and_the_best_and_restore_reads_them_back(tmp_path):
    mx.random.seed(1)
    net = _Head()
    net.initialize(mx.init.Normal(1.0))
    trainer = _train_one_step(net)
    prefix = str(tmp_path / "run" / "model")
    ckpt = checkpoint.Checkpointer(prefix, keep_last=1)
    state = {"epoch": 0, "batch": 1, "step": 1, "checkpoint": 0, "kept": [], "best": {}}
    arg, head = _checkpoint_parts(net)
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=3, name="fc1")
    for number in (1, 2, 3):
        if number == 2:
            state["best"] = {"checkpoint": 1}
        ckpt.write(number, symbol=sym, arg_params=arg, aux_params={}, head_params=head, trainer=trainer, state=state)
    (tmp_path / "run" / ".model-0004.states.tmp").write_bytes(b"half")  # a kill mid-write
    ckpt.write(4, symbol=sym, arg_params=arg, aux_params={}, head_params=head, trainer=trainer, state=state)
    saved = checkpoint.read_state(prefix)
    assert saved["checkpoint"] == 4 and saved["kept"] == [1, 4]
    kept = ["model-0001.head.params", "model-0001.params", "model-0001.states",
            "model-0004.head.params", "model-0004.params", "model-0004.states", "model-state.json", "model-symbol.json"]
    assert sorted(os.listdir(tmp_path / "run")) == sorted(kept + ["model-manifest.json"])
    from shrinkteanet.core.outputs import read_manifest

    # the manifest lists every file of the run on disk, the pruned ones no more (issue 21)
    assert sorted(read_manifest(prefix + checkpoint.MANIFEST_SUFFIX)) == kept
    # restore: every parameter and the momentum come back bit for bit
    other = _Head()
    other.initialize(mx.init.Zero())
    other_trainer = mx.gluon.Trainer(other.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    checkpoint.restore(saved, prefix, other, other_trainer)
    for name, p in net.collect_params().items():
        assert np.array_equal(bits(p.data()), bits(other.collect_params()[name].data())), name
    assert other_trainer._updaters[0].get_states(dump_optimizer=False) == \
        trainer._updaters[0].get_states(dump_optimizer=False)


def test_restore_names_the_missing_file(tmp_path):
    prefix = str(tmp_path / "model")
    with pytest.raises(InputError, match="model-0003.params is missing"):
        checkpoint.restore({"checkpoint": 3}, prefix, _Head(), None)


def test_a_nonfinite_checkpoint_is_not_written():
    state = {"checkpoint": 2, "step": 9}
    good = {"w": mx.nd.ones((2,))}
    assert checkpoint.checkpoint_is_finite(good, {}, {}, state)
    assert not checkpoint.checkpoint_is_finite(good, {"bn_moving_var": mx.nd.array([1.0, np.inf])}, {}, state)
    assert nonfinite_names({"a": mx.nd.array([np.nan]), "b": mx.nd.ones((1,))}) == ["a"]


def test_the_checkpointer_decides_what_goes_where(tmp_path):
    """``Checkpointer.save(method=, student=, symbol=)``: the student's symbol parameters and the margin
    head ``fc7*`` go to ``.params`` (InsightFace keeps fc7 beside fc1), every other trained block
    (adapters) to ``.head.params``; a NaN anywhere writes nothing and leaves the state alone."""
    mx.random.seed(2)
    net = _Head()
    net.initialize(mx.init.Normal(1.0))
    trainer = _train_one_step(net)
    prefix = str(tmp_path / "model")
    ckpt = checkpoint.Checkpointer(prefix, keep_last=2)
    state = {"epoch": 0, "batch": 1, "step": 1, "checkpoint": 0, "kept": [], "best": {}}
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=3, name="fc1")
    assert ckpt.save(method=net, student=net.fc1, symbol=sym, trainer=trainer, state=state)
    assert state["checkpoint"] == 1 and state["kept"] == [1]
    params = mx.nd.load(prefix + "-0001.params")
    assert sorted(params) == ["arg:fc1_bias", "arg:fc1_weight", "arg:fc7_weight"]
    assert sorted(mx.nd.load(prefix + "-0001.head.params")) == ["adapter_weight"]
    for name in ("fc1_weight", "fc7_weight"):
        assert np.array_equal(bits(params[f"arg:{name}"]), bits(net.collect_params()[name].data())), name
    net.adapter.weight.set_data(mx.nd.full((3, 3), np.nan))
    assert not ckpt.save(method=net, student=net.fc1, symbol=sym, trainer=trainer, state=state)
    assert state["checkpoint"] == 1 and not os.path.exists(prefix + "-0002.params")
