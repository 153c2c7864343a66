"""`shrinkteanet launch`: 2 workers + 1 server over 127.0.0.1 train in lock-step (dist_sync)."""
import json
import subprocess
import sys

import pytest

from shrinkteanet.study.tiny import train_overrides, write_tiny_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("launch") / "set", with_bin=False)


def _launch(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "shrinkteanet", "launch", *args], capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def test_two_workers_one_server_end_with_identical_parameters(data, tmp_path):
    out = tmp_path / "run"
    # MXNet's default threaded engine on purpose: it once let the initial weight broadcast race the first
    # gradient round (see fit.sync_initial_params), which NaiveEngine's in-order execution hid
    r = _launch("-n", "2", "-s", "1", "--env", "OMP_NUM_THREADS:1", "--timeout", "200", "--",
                sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--kvstore", "dist_sync",
                "--max-batches", "5", "--out", str(out), "--json", str(tmp_path / "summary-{rank}.json"),
                *train_overrides(data, None))
    assert r.returncode == 0, r.stderr[-3000:]
    s0 = json.loads((tmp_path / "summary-0.json").read_text())
    s1 = json.loads((tmp_path / "summary-1.json").read_text())
    assert (s0["rank"], s1["rank"]) == (0, 1) and s0["num_workers"] == s1["num_workers"] == 2
    assert s0["steps"] == s1["steps"] == 5
    # each worker read its own half of the set (4 batches of 8 per epoch: epoch 1, batch 1 after 5 steps) ...
    assert (s0["epoch"], s0["batch"]) == (1, 1)
    assert s0["losses"]["softmax"] != s1["losses"]["softmax"]
    # ... yet the summed gradients kept the weights bit-identical on both.  params_sha1 covers the trainable
    # parameters only: BatchNorm running statistics are not synchronised by the kvstore (InsightFace syncs
    # args only too) and legitimately differ between workers that normalise different shards
    assert s0["params_sha1"] == s1["params_sha1"]
    assert s0["checkpoint"] is not None and s1["checkpoint"] is None  # worker 0 writes the checkpoints
    assert (out / ("model-%04d.params" % s0["checkpoint"])).exists()


def test_a_failing_worker_fails_the_job(data, tmp_path):
    r = _launch("-n", "2", "-s", "1", "--timeout", "120", "--",
                sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--kvstore", "dist_sync",
                "--max-batches", "2", *train_overrides(tmp_path / "no-such-set", None))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "a worker exited with status 2" in r.stderr and "no-such-set" in r.stderr


def test_launch_needs_a_command_and_dist_needs_launch(tmp_path, data):
    r = _launch("-n", "2")
    assert r.returncode == 2 and "command" in r.stderr
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--kvstore",
                        "dist_sync", *train_overrides(data, None, "max_batches=1")], capture_output=True, text=True)
    assert r.returncode == 2 and "shrinkteanet launch" in r.stderr.strip().splitlines()[-1]
