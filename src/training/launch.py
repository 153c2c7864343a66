"""Distributed launcher over the dmlc tracker that ships inside the mxnet wheel.

``shrinkteanet launch -n WORKERS -s SERVERS [--hosts FILE] -- shrinkteanet train ...``
runs ``mxnet/tools/launch.py`` (MXNet's own front end of ``dmlc_tracker``) in
this process through ``runpy`` rather than copying it, with three adjustments
that MXNet 1.9.1's tracker needs on Python 3.11 and on machines without a
routable interface:

* ``threading.Thread.isAlive`` (removed in Python 3.9) is restored as an alias
  of ``is_alive``; the tracker's ``join`` loops call it.
* Local runs use the loopback address for the scheduler
  (``DMLC_PS_ROOT_URI``) and for every node (``DMLC_NODE_HOST``): the tracker's
  own choice connects a UDP socket towards 10.255.255.255, which fails or picks
  an unreachable address inside sandboxes and containers.
* The tracker starts the scheduler, servers and workers as shell commands in
  threads and would wait forever for the scheduler if a worker died.  The
  processes are started through a small ``subprocess`` stand-in that records
  them, so that the first failing worker ends the job (the others are
  terminated) and the launcher returns its exit status.

Each node runs the same command; ``DMLC_ROLE`` tells it what it is (importing
mxnet turns a ``server``/``scheduler`` process into a parameter-server node), and
``shrinkteanet train --kvstore dist_sync`` makes workers read shard
``rank`` of ``num_workers`` of the ``.rec``.
"""
import os
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time
import types

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


def mxnet_launch_script():
    """Path of ``mxnet/tools/launch.py`` in the installed wheel."""
    import importlib.util

    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("mxnet is not installed (pip install .[cpu] or .[cu112])")
    path = os.path.join(list(spec.submodule_search_locations)[0], "tools", "launch.py")
    if not os.path.exists(path):
        raise InputError(f"{path}: this mxnet wheel has no tools/launch.py")
    return path


class _Processes:
    """``subprocess`` stand-in for the tracker modules: same calls, but every child
    is recorded (role, Popen) so that the launcher can watch and stop them."""

    CalledProcessError = subprocess.CalledProcessError
    PIPE = subprocess.PIPE

    def __init__(self):
        self.lock = threading.Lock()
        self.procs = []  # (role, Popen)
        self.failures = []  # (role, returncode)
        self.stopping = False

    def Popen(self, *args, **kwargs):  # noqa: N802 - mirrors subprocess
        return subprocess.Popen(*args, **kwargs)

    def call(self, cmd, **kwargs):
        role = (kwargs.get("env") or os.environ).get("DMLC_ROLE", "?")
        with self.lock:
            if self.stopping:
                return 1
            p = subprocess.Popen(cmd, **kwargs)
            self.procs.append((role, p))
        rc = p.wait()
        if self.stopping:
            return 0  # we ended it: keep the tracker's threads from reporting it as a crash
        if rc != 0:
            with self.lock:
                self.failures.append((role, rc))
        # the watcher in `launch` reports failures and stops the job; answering 0 keeps the
        # tracker's threads from retrying or dumping the environment into a traceback
        return 0

    def check_call(self, cmd, **kwargs):
        rc = self.call(cmd, **kwargs)
        if rc != 0:
            raise subprocess.CalledProcessError(rc, cmd)
        return 0

    def check_output(self, *args, **kwargs):
        return subprocess.check_output(*args, **kwargs)

    def terminate_all(self):
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 10
        for _, p in procs:
            try:
                p.wait(max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()


def _install_shims(procs, local):
    if not hasattr(threading.Thread, "isAlive"):
        threading.Thread.isAlive = threading.Thread.is_alive
    from dmlc_tracker import local as dmlc_local
    from dmlc_tracker import ssh as dmlc_ssh
    from dmlc_tracker import tracker as dmlc_tracker

    shim = types.SimpleNamespace(**{k: getattr(procs, k) for k in
                                    ("Popen", "call", "check_call", "check_output", "CalledProcessError", "PIPE")})
    dmlc_tracker.subprocess = shim
    dmlc_local.subprocess = shim
    dmlc_ssh.subprocess = shim
    if local:
        dmlc_tracker.get_host_ip = lambda host_ip=None: "127.0.0.1"
    if not getattr(dmlc_tracker.PSTracker, "_shrinkteanet", False):
        original = dmlc_tracker.PSTracker.__init__

        def init(self, hostIP, cmd, port=9091, port_end=9999, envs=None):  # noqa: N803 - tracker's names
            # the tracker probes 9091, 9092, ... and frees the port before the scheduler binds it, so
            # two jobs started together can share a scheduler; an OS-chosen free port avoids that
            free = _free_port()
            original(self, hostIP, cmd, port=free, port_end=free + 1, envs=envs)

        dmlc_tracker.PSTracker.__init__ = init
        dmlc_tracker.PSTracker._shrinkteanet = True


def _free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(command, num_workers, num_servers=None, hosts=None, launcher=None, env=(), timeout=0):
    """Run ``command`` on ``num_workers`` workers and ``num_servers`` servers plus a
    scheduler.  ``launcher``: ``local`` (default without ``hosts``) or ``ssh``.
    ``env``: ``NAME:VALUE`` pairs for every node.  Returns the exit status."""
    if not command:
        raise InputError("launch: no command given (put it after --)")
    if num_workers < 1:
        raise InputError(f"launch -n {num_workers}: need at least one worker")
    num_servers = num_workers if num_servers is None else num_servers
    launcher = launcher or ("ssh" if hosts else "local")
    if launcher not in ("local", "ssh"):
        raise InputError(f"launch --launcher {launcher!r}: expected local or ssh")
    if launcher == "ssh" and not hosts:
        raise InputError("launch --launcher ssh needs --hosts FILE (one host[:port] per line)")
    if hosts and not os.path.exists(hosts):
        raise InputError(f"--hosts {hosts}: no such file")
    local = launcher == "local"
    if local:
        os.environ["DMLC_NODE_HOST"] = "127.0.0.1"
    for item in env:
        name, sep, value = item.partition(":")
        if not sep:
            raise InputError(f"--env {item!r}: expected NAME:VALUE")
        os.environ[name] = value
    argv = [mxnet_launch_script(), "-n", str(num_workers), "-s", str(num_servers), "--launcher", launcher]
    if hosts:
        argv += ["-H", hosts]
    # launch.py joins the command with spaces and runs it through bash: quote each word
    argv += [shlex.quote(c) for c in command]
    procs = _Processes()
    _install_shims(procs, local)
    log.info("launch: %d worker(s), %d server(s), %s: %s", num_workers, num_servers, launcher, " ".join(command))

    outcome = {}

    def run():
        saved = sys.argv
        sys.argv = argv
        try:
            runpy.run_path(argv[0], run_name="__main__")
            outcome["rc"] = 0
        except SystemExit as e:
            outcome["rc"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e
        finally:
            sys.argv = saved

    # launch.py installs a SIGINT handler; signal handlers can only be set from the main thread
    old_signal = signal.signal
    signal.signal = lambda *a, **k: None
    thread = threading.Thread(target=run, name="dmlc-launch", daemon=True)
    try:
        thread.start()
        start = time.time()
        while thread.is_alive():
            thread.join(0.2)
            if procs.failures:
                role, rc = procs.failures[0]
                log.error("launch: a %s exited with status %d; stopping the job", role, rc)
                procs.terminate_all()
                return rc if rc > 0 else 1
            if timeout and time.time() - start > timeout:
                log.error("launch: the job ran past %s s; stopping it", timeout)
                procs.terminate_all()
                return 124
    except KeyboardInterrupt:
        procs.terminate_all()
        return 130
    finally:
        signal.signal = old_signal
    if procs.failures:
        return procs.failures[0][1] or 1
    if "error" in outcome:
        raise InputError(f"launch: {outcome['error']}")
    return int(outcome.get("rc", 0) or 0)
