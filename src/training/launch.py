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
* Over ssh, dmlc's ``ssh.submit`` wraps the already joined command in single
  quotes once more (a quoted word ends that quote: a ``net_opts={...}`` override
  is brace-expanded, a path with a space is split), forwards only a fixed list of
  variables, sets no ``DMLC_TASK_ID`` and leaves remote workers running when the
  job stops.  It is replaced by ``ssh_submit``: each node's command is one string
  (``remote_command``: every word quoted once, for the remote login shell alone,
  the ``--env`` pairs exported, ``DMLC_ROLE``/``DMLC_TASK_ID``/``DMLC_NODE_HOST``
  set) given to ``ssh`` as one argument without a local shell (``ssh_argv``);
  ``ssh -tt`` ties the remote process to the connection, so terminating the local
  ``ssh`` when the job stops sends the remote worker SIGHUP.

Each node runs the same command; ``DMLC_ROLE`` tells it what it is (importing
mxnet turns a ``server``/``scheduler`` process into a parameter-server node), and
``shrinkteanet train --kvstore dist_sync`` (``dist_device_sync`` for GPU workers) makes workers read shard
``rank`` of ``num_workers`` of the ``.rec``.
"""
import os
import re
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


def _install_shims(procs, local, plan=None, host_ip=None):
    """Patch the tracker modules (module docstring); ``plan``: the ``SshPlan`` of an ssh job;
    ``host_ip``: the address the nodes reach the scheduler at (default: dmlc's guess)."""
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
    elif host_ip:
        dmlc_tracker.get_host_ip = lambda _=None: host_ip
    if plan is not None:
        dmlc_ssh.submit = lambda args: dmlc_tracker.submit(
            args.num_workers, args.num_servers, fun_submit=lambda nw, ns, envs: ssh_submit(plan, procs, envs),
            pscmd=" ".join(args.command), hostIP=args.host_ip)
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


def launch(command, num_workers, num_servers=None, *, hosts=None, launcher=None, env=(), timeout=0,
           host_ip=None):
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
    host_ip : str, optional
        ssh: the address of this machine that every node reaches the scheduler at (default: dmlc's
        guess from the host name or the default route, which fails on a machine without one).

    Returns
    -------
    int
        The exit status: 0, the first failing node's status, 124 (timeout) or 130 (Ctrl-C).
    """
    launcher = _check_launch(command, num_workers, hosts, launcher)
    num_servers = num_workers if num_servers is None else num_servers
    local = launcher == "local"
    pairs = _set_node_env(local, env)
    argv = _tracker_argv(command, num_workers=num_workers, num_servers=num_servers, launcher=launcher, hosts=hosts)
    plan = None if local else SshPlan(command, read_hosts(hosts), env=pairs, working_dir=os.getcwd())
    procs = _Processes()
    _install_shims(procs, local, plan, host_ip)
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
    """The environment every node inherits: loopback node host for local runs, ``--env`` pairs
    (returned as ``(name, value)``: the ssh commands export them on the remote nodes)."""
    if local:
        os.environ["DMLC_NODE_HOST"] = "127.0.0.1"
    pairs = []
    for item in env:
        name, sep, value = item.partition(":")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise InputError(f"--env {item!r}: expected NAME:VALUE (NAME of letters, digits, _)")
        os.environ[name] = value
        pairs.append((name, value))
    return pairs


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: variables dmlc's own ssh launcher forwards from the launching shell when they are set
FORWARDED = ("OMP_NUM_THREADS", "KMP_AFFINITY", "LD_LIBRARY_PATH", "DMLC_INTERFACE")


def read_hosts(path):
    """``[(host, port)]`` of a hosts file: one ``host[:port]`` per line (an MPI-style
    ``slots=N`` is ignored, as dmlc does); port 22 when none is given."""
    hosts = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            text = line.split("slots=")[0].strip()
            if not text or text.startswith("#"):
                continue
            host, _, port = text.partition(":")
            if not host or (port and not port.isdigit()):
                raise InputError(f"--hosts {path}:{n}: expected host[:port], got {text!r}")
            hosts.append((host, int(port or 22)))
    if not hosts:
        raise InputError(f"--hosts {path}: no host listed")
    return hosts


class SshPlan:
    """What every ssh node runs: the command (a word list, quoted only by ``remote_command``),
    the hosts (node ``i`` on ``hosts[i % len(hosts)]``, servers first, as dmlc), the
    ``--env`` pairs and the working folder (the launching one)."""

    def __init__(self, command, hosts, *, env=(), working_dir):
        self.command, self.hosts = list(command), list(hosts)
        self.env, self.working_dir = list(env), working_dir

    def nodes(self, num_workers, num_servers, tracker_env):
        """``[(role, task_id, ssh argv)]`` for the servers then the workers; ``task_id`` counts
        within a role (``DMLC_TASK_ID``, the worker index the tracker's local launcher sets too)."""
        out = []
        for i in range(num_servers + num_workers):
            role, task = ("server", i) if i < num_servers else ("worker", i - num_servers)
            host, port = self.hosts[i % len(self.hosts)]
            env = dict(tracker_env, DMLC_ROLE=role, DMLC_TASK_ID=task, DMLC_NODE_HOST=host)
            env.update((k, os.environ[k]) for k in FORWARDED if k in os.environ)
            env.update(self.env)
            out.append((role, task, ssh_argv(host, port, remote_command(self.command, env, self.working_dir))))
        return out


def remote_command(command, env, working_dir):
    """The one string a remote login shell runs for a node: ``export`` of each variable, ``cd`` to
    the working folder, ``exec`` of the command; every value and word quoted exactly once
    (``shlex.quote``), so that the remote shell's own parse gives back ``command`` word for word."""
    exports = [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
    # `&&`: a node whose folder is missing fails instead of running the command elsewhere
    return "; ".join(exports + [f"cd {shlex.quote(working_dir)} && exec {shlex.join(command)}"])


def ssh_argv(host, port, remote):
    """``ssh`` argv of one node, run without a local shell: ``remote`` stays one argument (ssh
    hands it unchanged to the remote shell); ``-tt`` gives the remote command a terminal, so that
    it gets SIGHUP when this ssh is stopped."""
    return ["ssh", "-tt", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-p", str(port), host, remote]


def ssh_submit(plan, procs, tracker_env):
    """The tracker's ``fun_submit`` for ssh: one thread per node running its ``ssh`` (recorded by
    ``procs``, so that a failure stops the job and ``terminate_all`` stops the remote nodes)."""
    nodes = plan.nodes(int(tracker_env["DMLC_NUM_WORKER"]), int(tracker_env["DMLC_NUM_SERVER"]), tracker_env)
    for role, task, argv in nodes:
        log.info("launch: %s %d on %s", role, task, argv[-2])
        env = dict(os.environ, DMLC_ROLE=role)  # for the record of procs.call (role of a failure)
        threading.Thread(target=procs.call, args=(argv,), kwargs={"env": env}, daemon=True).start()


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
