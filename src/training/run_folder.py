"""The output folder of a training run (``--out DIR``, checkpoints ``DIR/model-*``).

Rules this module enforces (issue 16, defects 4 and 5):

* one training at a time per folder: ``RunLock`` holds an exclusive ``flock`` on
  ``DIR/.shrinkteanet-train.lock`` for the whole run; a second run fails at once
  naming the holder (pid, host, start time).  The kernel drops the lock when the
  holder dies, whatever the signal, so a stale lock file never blocks a new run;
* an existing run is never silently overwritten: a new run (no ``--resume``) in a
  folder that already holds this prefix's state or checkpoints is refused unless
  ``overwrite=True``, which removes the old run's files first;
* ``--resume`` continues only the same run: the new config is compared with the one
  in ``PREFIX-state.json`` and every key that changes the run is listed.
"""
import fcntl
import json
import os
import shutil
import socket
import time

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.model.checkpoint import run_files

log = get_logger(__name__)

LOCK_NAME = ".shrinkteanet-train.lock"

#: Keys a resume may change: where things are, how often to log/save/verify, how long to run.
RESUME_FREE_KEYS = frozenset({
    "out", "data_dir", "val_dir", "val_targets", "tensorboard", "teacher_cache", "workers", "verbose", "frequent",
    "keep_last", "ckpt_every", "nan_guard", "max_batches", "num_epochs", "hybridize",
})


class RunLock:
    """Exclusive lock on a run folder (``flock``; released on close or when the holder dies)."""

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd = None

    def acquire(self):
        """Take the lock or raise ``InputError`` naming the process that holds it."""
        _check_folder(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"--out {self.folder}: not writable ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise InputError(f"{self.folder}: another training holds this output folder ({holder}); wait for it "
                             f"to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n".encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _check_folder(folder):
    """``--out`` must be (or become) a directory."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"--out {folder}: exists and is not a directory")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {folder}: cannot create the folder ({e.strerror})") from None


def check_free_space(folder, checkpoint_bytes):
    """Refuse to start when ``folder`` cannot hold two checkpoints (the next one is written
    beside the last before the last is pruned); the message gives the estimate."""
    free = shutil.disk_usage(folder).free
    needed = 2 * int(checkpoint_bytes)
    if free < needed:
        raise InputError(f"--out {folder}: {_mb(free)} free, but a checkpoint needs about {_mb(checkpoint_bytes)} "
                         f"(two must fit while the older is replaced); free space or choose another --out")


def _mb(n):
    return f"{n / 2 ** 20:.1f} MiB"


def _read_holder(fd):
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not yet written its pid"


def prepare_fresh_run(prefix, overwrite=False):
    """Refuse to start a new run over an existing one unless ``overwrite``; then remove it."""
    old = run_files(prefix)
    if not old:
        return
    if not overwrite:
        raise InputError(f"{old[0]}: {os.path.dirname(os.path.abspath(prefix))} already holds a training run; "
                         f"pass --resume to continue it or --overwrite to replace it")
    for path in old:
        os.unlink(path)
    log.warning("--overwrite: removed %d files of the previous run at %s", len(old), prefix)


def _plain(value):
    """JSON round trip, so that a config read back from state.json compares equal to a live one."""
    return json.loads(json.dumps(value, default=str))


def changed_run_keys(saved_cfg, cfg):
    """Keys whose values differ between ``saved_cfg`` (from state.json) and ``cfg``,
    except those in ``RESUME_FREE_KEYS``; sorted.  Only keys both know are compared: a run
    saved by an older version predates keys added since (they keep their defaults)."""
    old, new = _plain(dict(saved_cfg)), _plain(dict(cfg))
    keys = (set(old) & set(new)) - RESUME_FREE_KEYS
    return sorted(k for k in keys if old.get(k) != new.get(k))


def check_resume_config(state_path, saved_cfg, cfg):
    """``InputError`` listing each changed key (old -> new) when a resume would change the run."""
    changed = changed_run_keys(saved_cfg or {}, cfg)
    if not changed:
        return
    old, new = _plain(dict(saved_cfg or {})), _plain(dict(cfg))
    shown = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in changed[:8])
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    raise InputError(f"{state_path}: --resume with a config that changes the run in {', '.join(changed)} "
                     f"({shown}{more}); use the saved values or start a new run")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
