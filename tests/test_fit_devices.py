"""One SGD step on two CPU contexts against numpy; checkpoints portable across devices
(optimizer states on the CPU, BatchNorm statistics averaged over the replicas)."""
import pickle

import mxnet as mx
import numpy as np

from _toy_fit import ToyMethod, numpy_grads, toy_fit
from shrinkteanet.model import checkpoint
from shrinkteanet.study.tiny import train_overrides, write_tiny_set
from shrinkteanet.training import config, fit, train

TWO = [mx.cpu(0), mx.cpu(1)]


def test_two_sgd_steps_on_two_contexts_equal_a_numpy_step_over_the_global_batch():
    rng = np.random.RandomState(3)
    batches = [rng.randn(6, 3).astype(np.float32) for _ in range(2)]
    lr, mom, wd, lr_mult, wd_mult = 0.05, 0.9, 0.01, 2.0, 3.0
    f = toy_fit(ToyMethod(), batches, TWO, f"lr={lr}", f"momentum={mom}", f"wd={wd}", f"fc7_lr_mult={lr_mult}",
                f"fc7_wd_mult={wd_mult}")
    w, v = f.method.init_w.astype(np.float64), f.method.init_v.astype(np.float64)
    mw, mv = np.zeros_like(w), np.zeros_like(v)
    for batch in f.loader.epoch(0):
        x = batch.data
        f.trainer.set_learning_rate(lr)
        ok, values, n = f.update(batch)
        assert ok and n == 6
        want_loss = 0.5 * np.sum((x @ w.T @ v.T) ** 2) / 6
        assert np.isclose(values["toy"], want_loss, rtol=1e-5)
        gw, gv = numpy_grads(w, v, x.astype(np.float64))
        # MXNet's SGD: mom = m*mom - lr*lr_mult*(grad/B + wd*wd_mult*w); w += mom (one division by B)
        mw = mom * mw - lr * (gw / 6 + wd * w)
        mv = mom * mv - lr * lr_mult * (gv / 6 + wd * wd_mult * v)
        w, v = w + mw, v + mv
        for ctx in TWO:
            np.testing.assert_allclose(f.method.w.data(ctx).asnumpy(), w, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(f.method.v.data(ctx).asnumpy(), v, rtol=1e-5, atol=1e-6)
    f.monitor.close()


class _NDStub:
    """Stands in for NDArray while unpickling a ``.states`` file: keeps the raw saved bytes."""

    def __init__(self, *a):
        self.raw = None

    def __setstate__(self, state):
        self.raw = state["handle"]

    def device(self):
        """(dev_type, dev_id) of MXNet's NDArray::Save layout: magic, stype, ndim, int64 dims, ctx."""
        ndim = int(np.frombuffer(self.raw[8:12], np.uint32)[0])
        at = 12 + 8 * ndim
        return tuple(int(x) for x in np.frombuffer(self.raw[at:at + 8], np.int32))


class _StatesReader(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "NDArray":
            return _NDStub
        return super().find_class(module, name)


def _saved_devices(path):
    with open(path, "rb") as fh:
        states, _ = _StatesReader(fh).load()
    flat = []
    for s in states.values():
        flat += list(s) if isinstance(s, (list, tuple)) else [s]
    return {a.device() for a in flat if a is not None}


def test_checkpoints_hold_cpu_states_and_replica_mean_statistics_and_resume_on_one_context(tmp_path):
    data = write_tiny_set(tmp_path / "set", with_bin=False)
    out = tmp_path / "run" / "model"
    # cpu(1) first: the optimizer's momentum lives on the first device (gpu(k) on a GPU machine)
    ctx_list = [mx.cpu(1), mx.cpu(0)]
    cfg = config.config_by_name("mfnr_self", train_overrides(data, out, "max_batches=2", "lr_schedule=constant"))
    job = train.make_job(cfg, ctx_list)
    loader = train.make_loader(cfg, job)
    train.follow_data(cfg, loader)
    student, method = train.build_student_method(cfg, ctx_list)
    f = fit.Fit(method, loader, cfg, job, student=student, student_symbol=student.embedding_symbol)
    f.run()
    saved = checkpoint.read_state(str(out))
    pfile, _, sfile = checkpoint.training_paths(str(out), saved["checkpoint"])
    assert _saved_devices(sfile) == {(1, 0)}  # cpu(0): loads wherever the run resumes
    blob = mx.nd.load(pfile)
    stats = [n for n in student.collect_params() if checkpoint.is_running_stat(n)]
    differ = 0
    for name in stats:
        reps = [a.asnumpy() for a in student.collect_params()[name].list_data()]
        differ += not np.array_equal(reps[0], reps[1])
        np.testing.assert_allclose(blob[f"aux:{name}"].asnumpy(), (reps[0] + reps[1]) / 2, rtol=1e-6, atol=1e-7)
    assert differ > len(stats) // 2  # each device saw its own half of the batch
    cfg2 = config.config_by_name("mfnr_self", train_overrides(data, out, "max_batches=4", "lr_schedule=constant"))
    resumed = train.train(cfg2, [mx.cpu(0)], resume=True)
    assert resumed["steps"] == 4 and all(np.isfinite(v) for v in resumed["losses"].values())
