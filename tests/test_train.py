"""The training engine: schedule, tiny runs, checkpoints, bit-exact resume, the NaN guard."""
import json
import math
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.study.tiny import train_overrides, train_tiny_teacher, write_tiny_set
from shrinkteanet.training import config
from shrinkteanet.training import train
from shrinkteanet.core.errors import InputError
from shrinkteanet.model.checkpoint import read_state
from shrinkteanet.training.fit import NonFiniteGuard, NonFiniteLossError
from shrinkteanet.training.schedule import build_lr_schedule, total_batches


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = write_tiny_set(root / "set")
    teacher = train_tiny_teacher(data, root / "teacher")
    return data, teacher, root


def test_lr_schedule_warmup_steps_and_cosine():
    cfg = config.generate_config("mfnr", overrides=["lr=0.1", "warmup_batches=4", "lr_steps=10,20", "lr_factor=0.1",
                                                     "max_batches=30"])
    lr = build_lr_schedule(cfg, batches_per_epoch=5)
    got = [lr(i) for i in range(30)]
    want = [0.1 * i / 3 for i in range(4)] + [0.1] * 6 + [0.01] * 10 + [0.001] * 10
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # steps in epochs: 2 and 4 epochs of 5 batches = batches 10 and 20, as above
    cfg.lr_step_unit, cfg.lr_steps = "epoch", [2, 4]
    lr = build_lr_schedule(cfg, batches_per_epoch=5)
    np.testing.assert_allclose([lr(i) for i in range(30)], want, rtol=1e-9, atol=1e-12)
    cfg.lr_schedule, cfg.warmup_batches, cfg.lr_min = "cosine", 0, 0.0
    lr = build_lr_schedule(cfg, batches_per_epoch=5)
    np.testing.assert_allclose([lr(i) for i in (0, 29 / 2, 29)], [0.1, 0.05, 0.0], atol=1e-12)
    cfg.lr_schedule = "linear-ish"
    with pytest.raises(InputError, match="lr_schedule"):
        build_lr_schedule(cfg, batches_per_epoch=5)


def test_run_length_rules():
    cfg = config.generate_config("mfnr", overrides=["lr_steps=7,9"])
    assert total_batches(cfg, 4) == 9  # InsightFace ends at the last step
    cfg.num_epochs = 3
    assert total_batches(cfg, 4) == 12
    cfg.max_batches = 5
    assert total_batches(cfg, 4) == 5


def test_guard_names_the_term_and_stops_after_k():
    g = NonFiniteGuard(limit=3)
    assert g.check({"softmax": 1.0, "angular_4": 0.5}, True)
    assert not g.check({"softmax": 1.0, "angular_4": float("nan")}, True)
    assert g.check({"softmax": 1.0}, True) and g.in_a_row == 0  # a good step resets the count
    assert not g.check({"softmax": 1.0}, False)
    assert not g.check({"softmax": float("inf")}, True)
    with pytest.raises(NonFiniteLossError, match="'gradient'") as e:
        g.check({"softmax": 2.0}, False)
    assert e.value.term == "gradient" and g.skipped == 4


def test_tiny_run_learns_and_writes_insightface_checkpoints(tiny):
    data, _, root = tiny
    out = root / "self" / "model"
    cfg = config.config_by_name("mfnr_self", train_overrides(data, out, "max_batches=32", "lr_schedule=constant",
                                                       "keep_last=2", "verify_every=16"))
    seen = []
    summary = train.train(cfg, callbacks=[lambda info: seen.append(info["losses"]["softmax"])])
    assert len(seen) == 32 and summary["steps"] == 32 and summary["epoch"] == 8
    assert np.mean(seen[-4:]) < 0.5 * np.mean(seen[:4]), seen
    # verification ran through the evaluation code on lfw.bin and is reported
    acc = summary["best_verification"]["lfw"]["accuracy"]
    assert 0.0 <= acc <= 1.0 and summary["best_checkpoint"] is not None
    state = json.loads((root / "self" / "model-state.json").read_text())
    assert state["step"] == 32 and state["epoch"] == 8 and state["batch"] == 0
    assert state["config"]["distill"] == "none" and state["checkpoint"] == summary["checkpoint"]
    # keep-last-2 plus the best: nothing else is left on disk
    numbers = sorted(int(p.name[6:10]) for p in (root / "self").glob("model-[0-9]*.params")
                     if not p.name.endswith(".head.params"))
    assert numbers == sorted(set(state["kept"])) and len(numbers) <= 3
    assert set(state["kept"][-2:]) <= set(numbers) and state["best"]["checkpoint"] in numbers
    # the .params is an InsightFace checkpoint: mx.model reads it and the fc1 symbol binds with it
    sym, arg, aux = mx.model.load_checkpoint(str(out), summary["checkpoint"])
    assert sym.list_outputs() == ["fc1_output"] and "fc7_weight" in arg and arg["fc7_weight"].shape == (8, 32)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[("data", (2, 3, 32, 32))], for_training=False)
    mod.set_params(arg, aux)
    imgs = np.random.RandomState(0).randint(0, 255, (2, 3, 32, 32)).astype("float32")
    mod.forward(mx.io.DataBatch([mx.nd.array(imgs)]), is_train=False)
    assert mod.get_outputs()[0].shape == (2, 32)


def _resume_cfg(data, teacher, out, *extra):
    return config.config_by_name("mfnr_stn", train_overrides(data, out, f"teacher={teacher}", "lr_schedule=step",
                                                       "lr_steps=5,9", "lr_step_batch=0", "warmup_batches=2",
                                                       "max_batches=10", "ckpt_every=3", *extra))


def test_resume_is_bit_exact(tiny):
    """A run killed after step 7 and resumed (in a new process, from the step-6 checkpoint)
    ends with exactly the parameters of the uninterrupted run."""
    data, teacher, root = tiny
    full = train.train(_resume_cfg(data, teacher, root / "full" / "model"))

    class Crash(Exception):
        pass

    def crash(info):
        if info["step"] == 7:
            raise Crash

    with pytest.raises(Crash):
        train.train(_resume_cfg(data, teacher, root / "cut" / "model"), callbacks=[crash])
    state = read_state(str(root / "cut" / "model"))
    assert state["step"] == 6 and state["epoch"] == 1 and state["batch"] == 2
    js = root / "cut.json"
    cmd = [sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_stn", "--resume", "--json", str(js),
           *train_overrides(data, root / "cut" / "model", f"teacher={teacher}", "lr_schedule=step", "lr_steps=5,9",
                      "lr_step_batch=0", "warmup_batches=2", "max_batches=10", "ckpt_every=3")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = json.loads(js.read_text())
    assert resumed["steps"] == 10 and resumed["checkpoint"] == full["checkpoint"]
    assert set(resumed["losses"]) == {"softmax", "angular_1", "angular_2", "angular_3", "angular_4"}
    assert resumed["params_sha1"] == full["params_sha1"]
    a = mx.nd.load("%s-%04d.params" % (root / "full" / "model", full["checkpoint"]))
    b = mx.nd.load("%s-%04d.params" % (root / "cut" / "model", full["checkpoint"]))
    assert sorted(a) == sorted(b) and any(k.startswith("aux:") for k in a)
    for k in a:  # BatchNorm statistics included
        assert np.array_equal(a[k].asnumpy(), b[k].asnumpy()), k
    ha = mx.nd.load("%s-%04d.head.params" % (root / "full" / "model", full["checkpoint"]))
    hb = mx.nd.load("%s-%04d.head.params" % (root / "cut" / "model", full["checkpoint"]))
    assert sorted(ha) == sorted(hb) and any(k.startswith("adapter1_") for k in ha)
    for k in ha:
        assert np.array_equal(ha[k].asnumpy(), hb[k].asnumpy()), k


class _Poisoned:
    """Wraps a loader; batches at the given steps (and all from `from_step` on) become NaN."""

    def __init__(self, loader, at=(), from_step=None):
        self.loader, self.at, self.from_step, self.step = loader, set(at), from_step, 0
        self.batch_size, self.image_size, self.num_classes, self.keys = (
            loader.batch_size, loader.image_size, loader.num_classes, loader.keys)

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch, start_batch=0):
        for b in self.loader.epoch(epoch, start_batch):
            if self.step in self.at or (self.from_step is not None and self.step >= self.from_step):
                b = b._replace(data=np.full_like(b.data, np.nan))
            self.step += 1
            yield b

    def close(self):
        self.loader.close()


def _loader(cfg):
    from shrinkteanet.data.loader import FaceLoader

    return FaceLoader(cfg.data_dir, cfg.batch_size, seed=cfg.seed, workers=0)


def test_nan_batch_is_skipped_and_k_in_a_row_stop(tiny):
    data, _, root = tiny
    cfg = config.config_by_name("mfnr_self", train_overrides(data, root / "nan" / "model", "max_batches=6", "nan_guard=3",
                                                       "lr_schedule=constant", f"tensorboard={root / 'tb'}"))
    summary = train.train(cfg, loader=_Poisoned(_loader(cfg), at=[2]))
    assert summary["nonfinite_skipped"] == 1 and summary["steps"] == 6
    assert list((root / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars were written
    arg, aux = mx.model.load_checkpoint(str(root / "nan" / "model"), summary["checkpoint"])[1:]
    # weights and BatchNorm statistics stayed finite: the poisoned step changed nothing
    assert all(np.isfinite(v.asnumpy()).all() for v in list(arg.values()) + list(aux.values()))
    assert all(math.isfinite(v) for v in summary["losses"].values())

    cfg = config.config_by_name("mfnr_self", train_overrides(data, root / "nan2" / "model", "max_batches=12", "nan_guard=3",
                                                       "ckpt_every=2", "lr_schedule=constant"))
    with pytest.raises(NonFiniteLossError, match="'softmax'.*3 consecutive"):
        train.train(cfg, loader=_Poisoned(_loader(cfg), from_step=5))
    state = read_state(str(root / "nan2" / "model"))
    # poisoned steps 6, 7, 8: the run stops at step 8 before its checkpoint; the one of step 6
    # (after one skipped update) still holds the untouched, finite parameters
    assert state["step"] == 6 and state["nonfinite_skipped"] == 1
    arg = mx.model.load_checkpoint(str(root / "nan2" / "model"), state["checkpoint"])[1]
    assert all(np.isfinite(v.asnumpy()).all() for v in arg.values())


def test_resume_without_state_and_bad_teacher_fail_in_one_line(tiny, tmp_path):
    data, _, _ = tiny
    cfg = config.config_by_name("mfnr_self", train_overrides(data, tmp_path / "none" / "model", "max_batches=2"))
    with pytest.raises(InputError, match="--resume: no .*state.json"):
        train.train(cfg, resume=True)
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_stn", "--data", str(data),
                        "--teacher", str(tmp_path / "missing,1"), "max_batches=1", "workers=0"],
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "missing-symbol.json" in lines[-1] and lines[-1].startswith("shrinkteanet: error:")


def test_cuda_preload_is_a_no_op_on_cpu():
    from shrinkteanet.core import _cuda

    assert _cuda.preload() == [] and _cuda._cuda_mxnet() is False
    # importing the package loads no mxnet and no CUDA library
    r = subprocess.run([sys.executable, "-c", "import sys, shrinkteanet; print('mxnet' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False"
