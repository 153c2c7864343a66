"""The ssh launcher's command builder (no ssh is run): one correctly quoted string per node.

dmlc's own ``ssh.submit`` quoted the joined, already quoted command a second time, so a
``net_opts={...}`` override was brace-expanded and a path with a space split; it forwarded no
``--env`` pair and set no ``DMLC_TASK_ID``.  Here the exact string of each worker is compared with
one written out by hand, and then run by a real ``sh -c``/``bash -c`` (what sshd does with it)."""
import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from shrinkteanet.core.errors import InputError
from shrinkteanet.training import launch

OVERRIDE = "net_opts={'blocks':[1,2,3,4],'filters':[8,8,16,16,32]}"
OUT_DIR = "/data/my runs/mfnr stn"
TRACKER_ENV = {"DMLC_NUM_WORKER": 2, "DMLC_NUM_SERVER": 1, "DMLC_PS_ROOT_URI": "10.0.0.1", "DMLC_PS_ROOT_PORT": 9091}


def _plan(command, working_dir="/home/me/shrink tea"):
    return launch.SshPlan(command, [("node-a", 22), ("node-b", 2222)], env=[("OMP_NUM_THREADS", "2"),
                                                                           ("NCCL_DEBUG", "INFO x")],
                          working_dir=working_dir)


@pytest.fixture
def no_forwarded(monkeypatch):
    for k in launch.FORWARDED:
        monkeypatch.delenv(k, raising=False)


def test_two_workers_get_the_exact_command_line(no_forwarded):
    command = ["shrinkteanet", "train", "--config", "mfnr_stn", "--kvstore", "dist_device_sync", "--out", OUT_DIR,
               OVERRIDE]
    nodes = _plan(command).nodes(2, 1, TRACKER_ENV)
    assert [(r, t) for r, t, _ in nodes] == [("server", 0), ("worker", 0), ("worker", 1)]
    # servers first, then workers, round robin over the hosts (dmlc's order)
    _, _, worker1 = nodes[2]
    expected = ("export DMLC_NUM_WORKER=2; export DMLC_NUM_SERVER=1; export DMLC_PS_ROOT_URI=10.0.0.1; "
                "export DMLC_PS_ROOT_PORT=9091; export DMLC_ROLE=worker; export DMLC_TASK_ID=1; "
                "export DMLC_NODE_HOST=node-a; export OMP_NUM_THREADS=2; export NCCL_DEBUG='INFO x'; "
                "cd '/home/me/shrink tea' && exec shrinkteanet train --config mfnr_stn --kvstore dist_device_sync "
                "--out '/data/my runs/mfnr stn' "
                "'net_opts={'\"'\"'blocks'\"'\"':[1,2,3,4],'\"'\"'filters'\"'\"':[8,8,16,16,32]}'")
    assert worker1 == ["ssh", "-tt", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-p", "22", "node-a",
                       expected]
    _, _, worker0 = nodes[1]
    assert worker0[7:9] == ["2222", "node-b"] and "export DMLC_TASK_ID=0;" in worker0[-1]
    # what the remote shell parses after `exec` is the original argv, word for word
    assert shlex.split(expected.split(" && exec ", 1)[1]) == command


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_the_remote_shell_runs_the_original_argv(tmp_path, shell, no_forwarded):
    # sshd runs the one argument with the user's shell -c: do that here, with a command that reports
    # its argv, working folder and environment
    work = tmp_path / "work dir {a,b}"
    work.mkdir()
    probe = ("import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), "
             "{k: os.environ.get(k) for k in ('DMLC_ROLE', 'DMLC_TASK_ID', 'DMLC_NODE_HOST', 'NCCL_DEBUG', "
             "'OMP_NUM_THREADS')}]))")
    command = [sys.executable, "-c", probe, "--out", OUT_DIR, OVERRIDE, "*", "$HOME", "a;b"]
    for role, task, argv in _plan(command, str(work)).nodes(2, 1, TRACKER_ENV):
        r = subprocess.run([shell, "-c", argv[-1]], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        args, cwd, env = json.loads(r.stdout)
        assert args == command[3:] and cwd == str(work)
        assert env == {"DMLC_ROLE": role, "DMLC_TASK_ID": str(task), "DMLC_NODE_HOST": argv[-2],
                       "NCCL_DEBUG": "INFO x", "OMP_NUM_THREADS": "2"}


def test_env_names_and_hosts_files_are_checked(tmp_path):
    with pytest.raises(InputError, match="--env 'A B:1'"):
        launch._set_node_env(False, ["A B:1"])
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a\n\n# spare\nnode-b:2222 slots=4\n")
    assert launch.read_hosts(str(hosts)) == [("node-a", 22), ("node-b", 2222)]
    hosts.write_text("node-a:ssh\n")
    with pytest.raises(InputError, match=r"hosts:1: expected host\[:port\]"):
        launch.read_hosts(str(hosts))


class _Procs:
    def __init__(self):
        self.calls = []

    def call(self, cmd, **kwargs):
        self.calls.append((kwargs["env"]["DMLC_ROLE"], cmd))
        return 0


def test_ssh_submit_starts_every_node_through_the_recorded_processes(no_forwarded):
    # the stand-in of launch._Processes records each ssh client: the launcher's terminate_all
    # then stops them (and, through -tt, the remote commands)
    procs = _Procs()
    launch.ssh_submit(_plan(["shrinkteanet", "train"]), procs, dict(TRACKER_ENV))
    for _ in range(100):
        if len(procs.calls) == 3:
            break
        time.sleep(0.05)
    assert sorted(r for r, _ in procs.calls) == ["server", "worker", "worker"]
    assert all(cmd[:2] == ["ssh", "-tt"] and cmd[-1].endswith("exec shrinkteanet train") for _, cmd in procs.calls)


FAKE_SSH = """#!/bin/sh
# stand-in for ssh: log the argv, run the last argument (the remote command) with sh -c, as sshd does
for last; do :; done
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
exec sh -c "$last"
"""


def test_a_two_worker_job_over_the_ssh_launcher_trains(tmp_path):
    # the whole ssh path through MXNet's tracker, with `ssh` replaced by a local stand-in: the brace
    # override reaches the config and the --out path with a space holds worker 0's checkpoint
    from shrinkteanet.study.tiny import TINY_STUDENT, train_overrides, write_tiny_set

    data = write_tiny_set(tmp_path / "set", with_bin=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    (tmp_path / "hosts").write_text("127.0.0.1\n127.0.0.1:22\n")
    out = tmp_path / "run dir"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SSH_LOG=str(tmp_path / "ssh.log"))
    command = [sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--kvstore", "dist_sync",
               "--max-batches", "2", "--out", str(out), "--json", str(tmp_path / "s-{rank}.json"),
               *train_overrides(data, None)]
    assert TINY_STUDENT in command
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "launch", "-n", "2", "-s", "1", "-H",
                        str(tmp_path / "hosts"), "--host-ip", "127.0.0.1", "--env", "OMP_NUM_THREADS:1", "--timeout", "200", "--", *command],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / f"s-{k}.json").read_text()) for k in (0, 1))
    assert (s0["rank"], s1["rank"], s0["steps"], s1["steps"]) == (0, 1, 2, 2)
    assert s0["params_sha1"] == s1["params_sha1"] and s0["checkpoint"] is not None
    state = json.loads((out / "model-state.json").read_text())
    assert state["config"]["net_opts"] == {"blocks": [1, 1, 1, 1], "filters": [8, 8, 16, 16, 32]}
    calls = (tmp_path / "ssh.log").read_text().splitlines()
    assert len(calls) == 3 and all(c.startswith("-tt ") and "export OMP_NUM_THREADS=1;" in c for c in calls)
