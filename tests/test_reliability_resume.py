"""Issue 16 acceptance: a training killed with SIGKILL at three points and resumed each time ends
bit-identical to the uninterrupted run (atomic writes, state written before pruning, lock
released by the kernel)."""
import json
import signal
import subprocess
import sys
import time

from shrinkteanet.study.tiny import train_overrides, write_tiny_set
from shrinkteanet.training import config
from shrinkteanet.training import train

RUN = ("max_batches=40", "ckpt_every=3", "keep_last=1", "lr_schedule=step", "lr_steps=20,30", "lr_step_batch=0")


def _cli(data, out, *flags):
    return [sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--out", str(out), *flags,
            *train_overrides(data, None, *RUN)]


def _kill_after_step(cmd, state_path, step):
    """Start ``cmd``, SIGKILL it once its state has reached ``step``; returns the step it had."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = -1
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = json.loads(state_path.read_text())["step"]
        except (OSError, ValueError):
            pass
        if seen >= step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return seen


def test_sigkill_at_three_points_then_resume_is_bit_exact(tmp_path):
    data = write_tiny_set(tmp_path / "set", with_bin=False)
    full = train.train(config.config_by_name("mfnr_self", train_overrides(data, tmp_path / "full" / "model", *RUN)))
    out = tmp_path / "cut"
    state = out / "model-state.json"
    steps = [_kill_after_step(_cli(data, out), state, 6)]
    for at in (15, 27):
        steps.append(_kill_after_step(_cli(data, out, "--resume"), state, at))
    assert steps == sorted(steps) and steps[-1] < 40
    js = tmp_path / "cut.json"
    r = subprocess.run(_cli(data, out, "--resume", "--json", str(js)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = json.loads(js.read_text())
    assert resumed["steps"] == 40 and resumed["params_sha1"] == full["params_sha1"]
    # keep_last=1: only the final checkpoint is left (whatever the kills left was swept), no temp file
    assert sorted(p.name for p in out.glob("model-[0-9]*")) == [
        "model-%04d.%s" % (resumed["checkpoint"], s) for s in ("head.params", "params", "states")]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
