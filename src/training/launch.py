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


def launch(command, num_workers, num_servers=None, *, hosts=None, launcher=None, env=(), timeout=0):
    """Run ``command`` on ``num_workers`` workers and ``num_servers`` servers plus a scheduler.

    Parameters
    ----------
    command : list of str
        The command every node runs (``shrinkteanet train --kvstore dist_sync ...``).
    num_workers, num_servers : int
        Workers; servers (default: as many as workers).
    hosts : str, optional
        A hosts file (one ``host[:port]`` per line) for ``ssh``.
    launcher : str, optional
        ``local`` (default without ``hosts``) or ``ssh``.
    env : sequence of str
        ``NAME:VALUE`` pairs for every node.
    timeout : float
        Stop the job after this many seconds (0: never); the status is then 124.

    Returns
    -------
    int
        The exit status: 0, the first failing node's status, 124 (timeout) or 130 (Ctrl-C).
    """
    launcher = _check_launch(command, num_workers, hosts, launcher)
    num_servers = num_workers if num_servers is None else num_servers
    local = launcher == "local"
    _set_node_env(local, env)
    argv = _tracker_argv(command, num_workers=num_workers, num_servers=num_servers, launcher=launcher, hosts=hosts)
    procs = _Processes()
    _install_shims(procs, local)
    log.info("launch: %d worker(s), %d server(s), %s: %s", num_workers, num_servers, launcher, " ".join(command))
    tracker = _Tracker(argv)
    # launch.py installs a SIGINT handler; signal handlers can only be set from the main thread
    old_signal = signal.signal
    signal.signal = lambda *a, **k: None
    try:
        tracker.start()
        rc = _watch(tracker, procs, timeout)
    except KeyboardInterrupt:
        procs.terminate_all()
        return 130
    finally:
        signal.signal = old_signal
    if rc is not None:
        return rc
    if procs.failures:
        return procs.failures[0][1] or 1
    if tracker.error is not None:
        raise InputError(f"launch: {tracker.error}")
    return int(tracker.rc or 0)


def _check_launch(command, num_workers, hosts, launcher):
    """One-line ``InputError`` for an empty command, no worker or a bad launcher/hosts; returns the launcher."""
    if not command:
        raise InputError("launch: no command given (put it after --)")
    if num_workers < 1:
        raise InputError(f"launch -n {num_workers}: need at least one worker")
    launcher = launcher or ("ssh" if hosts else "local")
    if launcher not in ("local", "ssh"):
        raise InputError(f"launch --launcher {launcher!r}: expected local or ssh")
    if launcher == "ssh" and not hosts:
        raise InputError("launch --launcher ssh needs --hosts FILE (one host[:port] per line)")
    if hosts and not os.path.exists(hosts):
        raise InputError(f"--hosts {hosts}: no such file")
    return launcher


def _set_node_env(local, env):
    """The environment every node inherits: loopback node host for local runs, ``--env`` pairs."""
    if local:
        os.environ["DMLC_NODE_HOST"] = "127.0.0.1"
    for item in env:
        name, sep, value = item.partition(":")
        if not sep:
            raise InputError(f"--env {item!r}: expected NAME:VALUE")
        os.environ[name] = value


def _tracker_argv(command, *, num_workers, num_servers, launcher, hosts):
    """``sys.argv`` of ``mxnet/tools/launch.py`` for the job."""
    argv = [mxnet_launch_script(), "-n", str(num_workers), "-s", str(num_servers), "--launcher", launcher]
    if hosts:
        argv += ["-H", hosts]
    # launch.py joins the command with spaces and runs it through bash: quote each word
    return argv + [shlex.quote(c) for c in command]


class _Tracker(threading.Thread):
    """``mxnet/tools/launch.py`` run through ``runpy`` in a daemon thread; its exit status
    (``rc``) or the exception it raised (``error``) are kept when it ends."""

    def __init__(self, argv):
        super().__init__(name="dmlc-launch", daemon=True)
        self.argv = argv
        self.rc = None
        self.error = None

    def run(self):
        saved = sys.argv
        sys.argv = self.argv
        try:
            runpy.run_path(self.argv[0], run_name="__main__")
            self.rc = 0
        except SystemExit as e:
            self.rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # noqa: BLE001 - reported by launch
            self.error = e
        finally:
            sys.argv = saved


def _watch(tracker, procs, timeout):
    """Wait for the tracker; the first failing node or the timeout stops the job.  Returns the
    status to exit with then, or None when the tracker ended by itself."""
    start = time.time()
    while tracker.is_alive():
        tracker.join(0.2)
        if procs.failures:
            role, rc = procs.failures[0]
            log.error("launch: a %s exited with status %d; stopping the job", role, rc)
            procs.terminate_all()
            return rc if rc > 0 else 1
        if timeout and time.time() - start > timeout:
            log.error("launch: the job ran past %s s; stopping it", timeout)
            procs.terminate_all()
            return 124
    return None
