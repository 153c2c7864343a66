"""Issue 16, training side: no checkpoint with NaN/inf, one run per output folder, no silent
overwrite, resume only with the same config, a state that always names a complete checkpoint,
no num_classes warning for a count the user never set."""
import logging
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.study.tiny import train_overrides, write_tiny_set
from shrinkteanet.training import config
from shrinkteanet.training import train
from shrinkteanet.core.errors import InputError
from shrinkteanet.model import checkpoint
from shrinkteanet.model.checkpoint import read_state
from shrinkteanet.training.fit import NonFiniteLossError


pytestmark = pytest.mark.usefixtures("cli_log_handlers_closed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("rel") / "set", with_bin=False)


def _cfg(data, out, *extra, name="mfnr_self"):
    return config.config_by_name(name, train_overrides(data, out, "lr_schedule=constant", *extra))


def _checkpoints_on_disk(folder):
    return sorted(int(p.name[6:10]) for p in folder.glob("model-[0-9]*.params") if not p.name.endswith(".head.params"))


def _nonfinite_in(path):
    return [k for k, v in mx.nd.load(str(path)).items() if not np.isfinite(v.asnumpy()).all()]


def _assert_state_names_a_complete_checkpoint(prefix):
    state = read_state(str(prefix))
    number = state["checkpoint"]
    for suffix in ("params", "head.params", "states"):
        assert (prefix.parent / ("%s-%04d.%s" % (prefix.name, number, suffix))).is_file(), (number, suffix)
    return state


# --- defect 1 -------------------------------------------------------------------------------
def test_overflowing_batchnorm_statistics_never_reach_a_checkpoint(data, tmp_path):
    """lr=1e5: loss and gradients stay finite while BatchNorm moving_var overflows (measured:
    step 7).  The old guard accepted those steps and keep_last=1 pruned the last clean checkpoint."""
    out = tmp_path / "run" / "model"
    cfg = _cfg(data, out, "lr=1e5", "max_batches=12", "ckpt_every=1", "keep_last=1", "nan_guard=3")
    with pytest.raises(NonFiniteLossError) as e:
        train.train(cfg)
    assert e.value.term == "running statistics"
    _assert_state_names_a_complete_checkpoint(out)
    numbers = _checkpoints_on_disk(out.parent)
    assert numbers
    for n in numbers:
        assert _nonfinite_in("%s-%04d.params" % (out, n)) == [], n


def test_a_nonfinite_parameter_is_never_written_and_the_clean_checkpoint_stays(data, tmp_path):
    out = tmp_path / "run" / "model"
    cfg = _cfg(data, out, "max_batches=8", "ckpt_every=1", "keep_last=1", "nan_guard=2")

    def poison(info):
        if info["step"] == 3:  # after the update of step 3, before its checkpoint
            p = [p for k, p in info["method"].collect_params().items() if k.endswith("moving_var")][0]
            p.set_data(p.data() * float("inf"))

    with pytest.raises(NonFiniteLossError, match="running statistics"):
        train.train(cfg, callbacks=[poison])
    state = _assert_state_names_a_complete_checkpoint(out)
    assert state["checkpoint"] == 2 and state["step"] == 2
    assert _checkpoints_on_disk(out.parent) == [2]
    assert _nonfinite_in("%s-0002.params" % out) == []


# --- defect 4 -------------------------------------------------------------------------------
def test_a_held_output_folder_is_refused_at_once_naming_the_holder(data, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from shrinkteanet.training.run_folder import RunLock\n"
        f"RunLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        with pytest.raises(InputError, match=rf"another training holds .*pid {holder.pid} "):
            train.train(_cfg(data, folder / "model", "max_batches=2"))
        assert time.time() - t0 < 10
        assert not list(folder.glob("model-*"))  # nothing of the second run was written
        r = subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--out",
                            str(folder), *train_overrides(data, None, "max_batches=2")], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
            f"shrinkteanet: error: {folder}: another training holds this output folder (pid {holder.pid} ")
        assert not list(folder.glob("model-*"))  # not even the log
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the folder is free again
    summary = train.train(_cfg(data, folder / "model", "max_batches=2"))
    assert summary["steps"] == 2


def test_a_new_run_over_an_old_one_needs_resume_or_overwrite(data, tmp_path, capsys):
    from shrinkteanet.cli import main as cli_main

    out = tmp_path / "run" / "model"
    first = train.train(_cfg(data, out, "max_batches=4", "ckpt_every=1", "keep_last=5"))
    assert _checkpoints_on_disk(out.parent) == [1, 2, 3, 4]
    state_before = (out.parent / "model-state.json").read_text()
    args = ["train", "--config", "mfnr_self", "--out", str(out.parent),
            *train_overrides(data, None, "lr_schedule=constant", "max_batches=2")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("shrinkteanet: error: ") and "--resume" in err[-1] and "--overwrite" in err[-1]
    assert "model-state.json" in err[-1] or "model-0001" in err[-1]
    assert (out.parent / "model-state.json").read_text() == state_before  # untouched
    assert cli_main(args + ["--overwrite"]) == 0
    # the old run's later checkpoints are gone, the new state is the new run's
    assert _checkpoints_on_disk(out.parent) == [1]
    assert read_state(str(out))["step"] == 2 and first["steps"] == 4


def test_out_naming_a_file_is_one_line(data, tmp_path, capsys):
    from shrinkteanet.cli import main as cli_main

    f = tmp_path / "afile"
    f.write_text("x")
    assert cli_main(["train", "--config", "mfnr_self", "--out", str(f), *train_overrides(data, None, "max_batches=1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"shrinkteanet: error: --out {f}: exists and is not a directory"


# --- defect 5 -------------------------------------------------------------------------------
def test_resume_with_a_changed_config_is_refused_listing_the_keys(data, tmp_path):
    out = tmp_path / "run" / "model"
    train.train(_cfg(data, out, "max_batches=4", "ckpt_every=2"))
    with pytest.raises(InputError, match=r"changes the run in batch_size\b.*batch_size: 16 -> 8"):
        train.train(_cfg(data, out, "max_batches=6", "batch_size=8"), resume=True)
    other_net = "net_opts={'blocks':[1,1,1,1],'filters':[8,8,16,16,16]}"
    with pytest.raises(InputError, match=r"changes the run in emb_size, net_opts \("):
        train.train(_cfg(data, out, "max_batches=6", other_net, "emb_size=16"), resume=True)
    assert read_state(str(out))["step"] == 4  # nothing moved
    # keys that only say where, how often or how long may change
    summary = train.train(_cfg(data, out, "max_batches=6", "frequent=7", "keep_last=2", "workers=1"), resume=True)
    assert summary["steps"] == 6


# --- defect 7 -------------------------------------------------------------------------------
def test_a_crash_while_saving_leaves_a_state_that_names_a_complete_checkpoint(data, tmp_path, monkeypatch):
    """keep_last=1: the old code deleted checkpoint N-1 before state.json moved to N."""
    out = tmp_path / "run" / "model"
    real = checkpoint.write_json
    writes = []

    def crash_on_second_state(path, obj):
        if str(path).endswith("-state.json"):
            writes.append(path)
            if len(writes) == 2:
                raise OSError("simulated crash while writing the state")
        return real(path, obj)

    monkeypatch.setattr(checkpoint, "write_json", crash_on_second_state)
    with pytest.raises(OSError, match="simulated"):
        train.train(_cfg(data, out, "max_batches=6", "ckpt_every=2", "keep_last=1"))
    monkeypatch.setattr(checkpoint, "write_json", real)
    _assert_state_names_a_complete_checkpoint(out)
    assert train.train(_cfg(data, out, "max_batches=6", "ckpt_every=2", "keep_last=1"), resume=True)["steps"] == 6
    assert _checkpoints_on_disk(out.parent) == [3]


def test_a_crash_while_pruning_loses_nothing(data, tmp_path, monkeypatch):
    out = tmp_path / "run" / "model"

    real, calls = checkpoint.Checkpointer.prune, []

    def crash_on_second(self, keep):
        calls.append(list(keep))
        if len(calls) == 2:
            raise OSError("simulated crash while pruning")
        return real(self, keep)

    monkeypatch.setattr(checkpoint.Checkpointer, "prune", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        train.train(_cfg(data, out, "max_batches=6", "ckpt_every=2", "keep_last=1"))
    state = _assert_state_names_a_complete_checkpoint(out)
    assert state["checkpoint"] == 2 and state["kept"] == [2]
    assert _checkpoints_on_disk(out.parent) == [1, 2]  # one too many, never one too few
    monkeypatch.setattr(checkpoint.Checkpointer, "prune", real)
    (out.parent / ".model-0003.states.tmp").write_bytes(b"half")  # what a kill mid-write leaves
    assert train.train(_cfg(data, out, "max_batches=6", "ckpt_every=2", "keep_last=1"), resume=True)["steps"] == 6
    # the next prune also removed what the crash left behind
    assert _checkpoints_on_disk(out.parent) == [3] and not list(out.parent.glob("*.tmp"))


# --- defect 11 ------------------------------------------------------------------------------
def test_no_num_classes_warning_unless_the_config_sets_it(data, tmp_path, caplog):
    base = [o for o in train_overrides(data, None, "max_batches=1") if not o.startswith("num_classes=")]
    cfg = config.config_by_name("mfnr_self", base + [f"out={tmp_path / 'a' / 'model'}"])
    assert cfg.num_classes == 85742  # the emore row's count, not chosen for this set
    with caplog.at_level(logging.INFO, logger="shrinkteanet"):
        summary = train.train(cfg)
    assert summary["steps"] == 1 and cfg.num_classes == 8
    assert not [r for r in caplog.records if "num_classes" in r.getMessage() and r.levelno >= logging.WARNING]
    caplog.clear()
    cfg = config.config_by_name("mfnr_self", base + [f"out={tmp_path / 'b' / 'model'}", "num_classes=5"])
    with caplog.at_level(logging.INFO, logger="shrinkteanet"):
        train.train(cfg)
    assert [r for r in caplog.records if "num_classes=5" in r.getMessage() and r.levelno == logging.WARNING]


# --- also: free space and writability --------------------------------------------------------
def test_too_little_space_is_refused_before_training_with_the_estimate(data, tmp_path, monkeypatch):
    from collections import namedtuple

    from shrinkteanet.training import run_folder

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 4096, 4096))
    steps = []
    out = tmp_path / "run" / "model"
    with pytest.raises(InputError, match=r"--out .*run: 0\.0 MiB free, but a checkpoint needs about \d+\.\d MiB"):
        train.train(_cfg(data, out, "max_batches=2"), callbacks=[steps.append])
    assert steps == [] and not list(out.parent.glob("model-*"))
    monkeypatch.undo()
    methods = []
    summary = train.train(_cfg(data, out, "max_batches=1"), callbacks=[lambda info: methods.append(info["method"])])
    assert summary["checkpoint"] == 1
    # the estimate is of the right size: the real checkpoint (params, head, states) and a little more
    on_disk = sum(p.stat().st_size for p in out.parent.glob("model-0001.*"))
    assert on_disk <= train.checkpoint_bytes(methods[0]) <= 2 * on_disk + 65536


def test_an_output_folder_that_cannot_be_created_is_one_line(data):
    with pytest.raises(InputError, match=r"--out /proc/shrinkteanet-test: cannot create the folder"):
        train.train(_cfg(data, "/proc/shrinkteanet-test/model", "max_batches=1"))


def test_resume_compares_only_keys_both_configs_know():
    from shrinkteanet.training.run_folder import changed_run_keys

    saved = {"lr": 0.1, "network": "mfnr", "workers": 2}
    assert changed_run_keys(saved, {"lr": 0.1, "network": "mfnr", "workers": 0, "new_key": 1}) == []
    assert changed_run_keys(saved, {"lr": 0.2, "network": "mfn"}) == ["lr", "network"]
    # tuples and EasyDicts compare equal to what state.json gave back
    assert changed_run_keys({"lr_steps": [5, 9], "net_opts": {"a": [1]}},
                            {"lr_steps": (5, 9), "net_opts": {"a": (1,)}}) == []
