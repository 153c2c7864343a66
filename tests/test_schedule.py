"""shrinkteanet.training.schedule: lr_steps resolved to the run's global batch (InsightFace's
``int(step * 512 / batch_size)``), in samples or in epochs; the config line that shows them."""
import subprocess
import sys

import pytest

from shrinkteanet.core.errors import InputError
from shrinkteanet.training import config, schedule

PAPER = [100000, 160000, 220000]  # batches of 512 images (InsightFace's ArcFace steps)


@pytest.mark.parametrize("global_batch, want", [
    (512, PAPER),
    (128, [400000, 640000, 880000]),  # 4x as many batches of a quarter the size
    (1024, [50000, 80000, 110000]),
    # 512/384 = 4/3: 133333.3, 213333.3, 293333.3, truncated as InsightFace's int()
    (384, [133333, 213333, 293333]),
])
def test_batch_steps_at_512_are_rescaled_to_the_global_batch(global_batch, want):
    got = schedule.resolve_lr_steps(PAPER, "batch", global_batch=global_batch, step_batch=512)
    assert got == want


def test_batch_steps_without_a_reference_batch_are_the_runs_own():
    assert schedule.resolve_lr_steps([5, 9], "batch", global_batch=16, step_batch=0) == [5, 9]


def test_sample_steps_count_images():
    # 51.2M images = 100k batches of 512 = 400k batches of 128; 1M images / 384 = 2604.17 -> 2604
    assert schedule.resolve_lr_steps([51_200_000], "sample", global_batch=512, step_batch=512) == [100000]
    assert schedule.resolve_lr_steps([51_200_000], "sample", global_batch=128, step_batch=512) == [400000]
    assert schedule.resolve_lr_steps([1_000_000], "sample", global_batch=384) == [2604]


def test_epoch_steps_ignore_the_batch_and_the_reference():
    for global_batch, step_batch in ((24, 512), (512, 0), (7, 3)):
        got = schedule.resolve_lr_steps([2, 4], "epoch", global_batch=global_batch, step_batch=step_batch,
                                        batches_per_epoch=5)
        assert got == [10, 20]
    assert schedule.resolve_lr_steps([2, 4], "epoch", global_batch=24) is None  # data unread: unknown


@pytest.mark.parametrize("kwargs, key", [
    (dict(lr_steps=[1], unit="epochs", global_batch=8), "lr_step_unit"),
    (dict(lr_steps=[-1], unit="batch", global_batch=8), "lr_steps"),
    (dict(lr_steps=[2.5], unit="batch", global_batch=8), "lr_steps"),
    (dict(lr_steps=["7"], unit="batch", global_batch=8), "lr_steps"),
    (dict(lr_steps=[1], unit="batch", global_batch=0), "batch_size"),
    (dict(lr_steps=[1], unit="batch", global_batch=8, step_batch=-512), "lr_step_batch"),
])
def test_bad_schedules_name_the_key(kwargs, key):
    lr_steps, unit = kwargs.pop("lr_steps"), kwargs.pop("unit")
    with pytest.raises(InputError, match=f"config {key}="):
        schedule.resolve_lr_steps(lr_steps, unit, **kwargs)


def test_the_paper_schedule_at_batch_128_steps_and_ends_at_the_rescaled_batches():
    # steps 4, 8 at 512 = 16, 32 at 128; the run ends at the last step as InsightFace's
    cfg = config.config_by_name("mfnr_stn", ["batch_size=128", "lr=0.1", "lr_factor=0.1", "lr_steps=4,8"])
    assert cfg.lr_step_unit == "batch" and cfg.lr_step_batch == 512
    assert schedule.total_batches(cfg, batches_per_epoch=10) == 32
    lr = schedule.build_lr_schedule(cfg, batches_per_epoch=10)
    assert [lr(i) for i in (0, 15, 16, 31, 32)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    # a worker's loader batch times the workers overrides cfg.batch_size (fit.Fit's global batch)
    assert schedule.total_batches(cfg, batches_per_epoch=10, global_batch=256) == 16


def test_the_studys_epoch_schedule_is_untouched_by_the_reference_batch():
    cfg = config.config_by_name("mfnr_stn", ["batch_size=24", "lr_step_unit=epoch", "lr_steps=1,2"])
    want = [1 * 7, 2 * 7]
    for step_batch in (512, 0, 24):
        cfg.lr_step_batch = step_batch
        assert schedule.cfg_lr_steps(cfg, batches_per_epoch=7) == want
        lr = schedule.build_lr_schedule(cfg, batches_per_epoch=7)
        assert [lr(i) for i in (6, 7, 13, 14)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_config_prints_the_resolved_steps_and_refuses_a_bad_unit():
    cmd = [sys.executable, "-m", "shrinkteanet", "config", "--teacher-pending", "mfnr_stn", "batch_size=128"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "100000,160000,220000 batches of 512 images -> batches 400000,640000,880000 at global batch 128" in line
    r = subprocess.run(cmd + ["lr_step_unit=epochs"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["shrinkteanet: error: config lr_step_unit='epochs': expected batch, "
                                             "sample, epoch"]
