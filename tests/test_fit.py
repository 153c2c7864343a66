"""shrinkteanet.training.fit: the loop's phases on their own (start vs resume, position, one-save-per-step)."""
import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.study.tiny import train_overrides as overrides, write_tiny_set as make_set
from shrinkteanet.core.errors import InputError
from shrinkteanet.model import checkpoint
from shrinkteanet.training import config, fit, train


def test_next_position_wraps_at_the_epoch_end():
    assert fit.next_position(2, 0, 4) == (2, 1)
    assert fit.next_position(2, 2, 4) == (2, 3)
    assert fit.next_position(2, 3, 4) == (3, 0)


def test_resumed_state_takes_the_saved_position_and_drops_later_curve_points():
    cfg = config.config_by_name("mfnr_self", ["seed=5"])
    fresh = fit.fresh_state(cfg)
    assert (fresh["epoch"], fresh["batch"], fresh["step"], fresh["checkpoint"]) == (0, 0, 0, 0)
    assert fresh["seed"] == 5 and fresh["config"]["seed"] == 5 and "curve" not in fresh
    saved = dict(fresh, epoch=3, batch=1, step=13, checkpoint=4, kept=[3, 4], best={"checkpoint": 3},
                 nonfinite_skipped=2, seed=99, curve=[{"step": 10, "lr": 0.1}, {"step": 13, "lr": 0.1},
                                                      {"step": 14, "lr": 0.1}])
    state = fit.resumed_state(fresh, saved)
    assert (state["epoch"], state["batch"], state["step"], state["checkpoint"]) == (3, 1, 13, 4)
    assert state["kept"] == [3, 4] and state["best"] == {"checkpoint": 3} and state["nonfinite_skipped"] == 2
    assert [p["step"] for p in state["curve"]] == [10, 13]  # a killed run's point after its checkpoint goes
    assert state["seed"] == 5 and state["config"] is fresh["config"]  # the new run's own
    assert fresh["step"] == 0  # not changed in place


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    data = make_set(root / "set", with_bin=False)
    out = root / "run" / "model"
    cfg = config.config_by_name("mfnr_self", overrides(data, out, "max_batches=7", "ckpt_every=3",
                                                       "lr_schedule=constant"))
    summary = train.train(cfg)
    return data, out, summary


def _phase_fit(data, out, *extra):
    """A ``Fit`` over a freshly built method of the same run, before any phase ran."""
    cfg = config.config_by_name("mfnr_self", overrides(data, out, "max_batches=7", "ckpt_every=3",
                                                       "lr_schedule=constant", *extra))
    job = train.make_job(cfg, [mx.cpu()])
    loader = train.make_loader(cfg, job)
    train.follow_data(cfg, loader)
    student, method = train.build_student_method(cfg, job.ctx_list)
    return fit.Fit(method, loader, cfg, job, student=student, student_symbol=student.embedding_symbol)


def test_start_resume_picks_the_saved_position_weights_and_optimizer_state(run):
    data, out, summary = run
    saved = checkpoint.read_state(str(out))
    # 8 images x 8 ids / batch 16 = 4 batches an epoch: checkpoints at steps 3, 4 (epoch end), 6 and 7 (the end)
    assert saved["step"] == 7 and (saved["epoch"], saved["batch"]) == (1, 3) and saved["checkpoint"] == 4
    f = _phase_fit(data, out)
    f.build_trainer()
    f.start(resume=True)
    assert (f.state["epoch"], f.state["batch"], f.state["step"]) == (1, 3, 7)
    assert f.state["checkpoint"] == 4 and f.saved_at == 7
    assert fit.params_digest(f.method.trainable_params()) == summary["params_sha1"]
    blob = mx.nd.load("%s-%04d.params" % (out, 4))
    for name, p in f.method.collect_params().items():
        key = f"arg:{name}" if f"arg:{name}" in blob else f"aux:{name}"
        if key in blob:
            assert np.array_equal(p.data().asnumpy(), blob[key].asnumpy()), name
    # the momentum is the saved one, not zeros
    states = f.trainer._updaters[0].states
    assert any(float(mx.nd.abs(s).sum().asscalar()) > 0 for s in states.values() if s is not None)
    f.open_hooks()
    f.save()  # the resumed step is already on disk: nothing new is written
    f.monitor.close()
    assert checkpoint.read_state(str(out))["checkpoint"] == 4


def test_start_fresh_is_at_zero_and_resume_without_a_state_is_refused(run, tmp_path):
    data, _, _ = run
    f = _phase_fit(data, tmp_path / "new" / "model")
    f.build_trainer()
    f.start(resume=False)
    assert (f.state["epoch"], f.state["batch"], f.state["step"], f.state["checkpoint"]) == (0, 0, 0, 0)
    assert f.saved_at == -1
    g = _phase_fit(data, tmp_path / "none" / "model")
    g.build_trainer()
    with pytest.raises(InputError, match="no .*none/model-state.json to resume from"):
        g.start(resume=True)


def test_one_step_then_the_after_step_hooks_move_the_position_and_save(run, tmp_path):
    data, _, _ = run
    f = _phase_fit(data, tmp_path / "one" / "model", "ckpt_every=1")
    f.build_trainer()
    f.start(resume=False)
    f.open_hooks()
    batches = iter(f.loader.epoch(0, 0))
    seen = []
    f.callbacks = (seen.append,)
    for b in range(4):  # the whole of epoch 0: the position wraps to epoch 1
        f.train_batch(0, b, next(batches))
    f.monitor.close()
    assert [i["step"] for i in seen] == [1, 2, 3, 4] and all(i["ok"] for i in seen)
    assert (f.state["epoch"], f.state["batch"], f.state["step"]) == (1, 0, 4)
    saved = checkpoint.read_state(str(tmp_path / "one" / "model"))
    assert saved["step"] == 4 and saved["checkpoint"] == 4 and f.saved_at == 4
    assert len(f.window) == 4 and set(f.summary()["losses"]) == {"softmax"}


def test_the_run_records_its_lr_steps_resolved_to_its_batch_and_data(run, tmp_path):
    data, out, summary = run
    # the paper's steps at 512, run at global batch 16: 32x the batches; 4 batches an epoch
    want = {"lr_schedule": "constant", "lr_steps": [100000, 160000, 220000], "lr_step_unit": "batch",
            "lr_step_batch": 512, "global_batch": 16, "batches_per_epoch": 4,
            "lr_steps_batches": [3200000, 5120000, 7040000]}
    assert summary["schedule"] == want
    assert checkpoint.read_state(str(out))["schedule"] == want
    # 2 batches of 32 images = batch 4 at 16; 1 epoch = batch 4; the rate steps there
    for extra in (("lr_steps=2", "lr_step_batch=32"), ("lr_steps=1", "lr_step_unit=epoch")):
        f = _phase_fit(data, tmp_path / extra[-1] / "model", "lr_schedule=step", "lr=0.1", *extra)
        assert f.schedule_record["lr_steps_batches"] == [4], extra
        assert [f.schedule(i) for i in (3, 4)] == pytest.approx([0.1, 0.01])


def test_final_losses_average_the_window_or_take_the_saved_curve_point_at_the_last_step():
    window = [{"softmax": 2.0, "angular_1": 0.5}, {"softmax": 4.0, "angular_1": 1.5}]
    assert fit.final_losses(window, {"step": 9, "curve": []}) == {"softmax": 3.0, "angular_1": 1.0}
    curve = [{"step": 6, "lr": 0.1, "softmax": 7.0}, {"step": 9, "lr": 0.01, "softmax": 5.5, "angular_1": 0.25}]
    assert fit.final_losses([], {"step": 9, "curve": curve}) == {"softmax": 5.5, "angular_1": 0.25}
    assert fit.final_losses([], {"step": 10, "curve": curve}) == {}  # the last step was not a curve point
    assert fit.final_losses([], {"step": 0}) == {}


def test_a_finished_run_copied_to_a_new_folder_resumes_at_its_end_with_its_losses_and_weights(tmp_path):
    """The study's saved teacher: its final checkpoint and state, copied into a new work folder
    and ``--resume``d, train no step and report the run's own final losses and params digest."""
    import shutil

    data = make_set(tmp_path / "set", with_bin=False)
    extra = ("max_batches=6", "frequent=3", "lr_schedule=constant")
    full = train.train(config.config_by_name("mfnr_self", overrides(data, tmp_path / "a" / "model", *extra)))
    (tmp_path / "b").mkdir()
    ck = "%04d" % full["checkpoint"]
    for f in (f"model-{ck}.params", f"model-{ck}.states", f"model-{ck}.head.params", "model-state.json",
              "model-symbol.json"):
        if (tmp_path / "a" / f).exists():
            shutil.copy(tmp_path / "a" / f, tmp_path / "b" / f)
    cfg = config.config_by_name("mfnr_self", overrides(data, tmp_path / "b" / "model", *extra))
    again = train.train(cfg, resume=True)
    assert again["steps"] == full["steps"] == 6 and again["params_sha1"] == full["params_sha1"]
    assert again["losses"] == full["losses"] and set(full["losses"]) == {"softmax"}
    assert again["curve"] == full["curve"] and again["img_per_s"] == 0.0  # no step ran
