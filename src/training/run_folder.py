"""The output folder of a training run (``--out DIR``, checkpoints ``DIR/model-*``).

Rules this module enforces (issue 16, defects 4 and 5):

* one training at a time per folder: ``RunLock`` holds an exclusive ``flock`` on
  ``DIR/.shrinkteanet-train.lock`` for the whole run; a second run fails at once
  naming the holder (pid, host, start time).  The kernel drops the lock when the
  holder dies, whatever the signal, so a stale lock file never blocks a new run;
* an existing run is never silently overwritten: a new run (no ``--resume``) in a
  folder that already holds this prefix's state or checkpoints is refused unless
  ``overwrite=True``, which removes the old run's files first: exactly those its
  manifest (``PREFIX-manifest.json``) lists, or for a run written before manifests
  existed those its ``PREFIX-state.json`` names; a file named like a checkpoint that
  neither lists is never removed, and the run is refused rather than written over it
  (issue 21);
* a run never writes over a checkpoint it reads (``--teacher`` at the run's own prefix is
  refused by ``run_outputs``/``run_inputs`` and ``core.outputs.check_outputs``);
* a run that fails before its first checkpoint leaves nothing (``RunClaim``): the folders
  it created are removed, its log and manifest too; after a crash (not a mistake of the
  input) the log is kept beside the would-be folder and named in the error log line;
* ``--resume`` continues only the same run: the new config is compared with the one
  in ``PREFIX-state.json`` and every key that changes the run is listed.
"""
import contextlib
import fcntl
import json
import os
import shutil
import socket
import time

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.outputs import Input, check_outputs, file_output, folder_output, missing_folders
from shrinkteanet.core.outputs import mib_text, remove_created_folders
from shrinkteanet.core.utils import parse_model_arg
from shrinkteanet.model.checkpoint import LOG_SUFFIX, MANIFEST_SUFFIX, STATE_SUFFIX, checkpoint_paths
from shrinkteanet.model.checkpoint import forget_run_files, listed_run_files, manifest_path, read_state
from shrinkteanet.model.checkpoint import record_run_files, run_files, state_named_files, training_paths

log = get_logger(__name__)

LOCK_NAME = ".shrinkteanet-train.lock"

#: Keys a resume may change: where things are, how often to log/save/verify, how long to run.
RESUME_FREE_KEYS = frozenset({
    "out", "data_dir", "val_dir", "val_targets", "tensorboard", "workers", "verify_every", "frequent",
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
        raise InputError(f"--out {folder}: {mib_text(free)} free, but a checkpoint needs about {mib_text(checkpoint_bytes)} "
                         f"(two must fit while the older is replaced); free space or choose another --out")


def _read_holder(fd):
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not yet written its pid"


def previous_run_files(prefix):
    """The files of the run at ``prefix`` that exist, as its manifest lists them (or, for a run
    written before manifests, as its state names them); None when neither exists."""
    listed = listed_run_files(prefix)
    if listed is None:
        state = read_state(prefix)
        if state is None:
            return None
        listed = state_named_files(prefix, state)
    return sorted(p for p in listed if os.path.lexists(p))


def prepare_fresh_run(prefix, overwrite=False, keep=()):
    """Refuse to start a new run over an existing one unless ``overwrite``; then remove exactly
    the old run's files (``previous_run_files``), never one of ``keep`` (what this run reads).
    A file named like a run's (``run_files``) that the old run does not list is never removed
    and the new run, which would write over it, is refused."""
    old = previous_run_files(prefix) or []
    own = {os.path.abspath(p) for p in old}
    foreign = [p for p in run_files(prefix) if os.path.abspath(p) not in own]
    if foreign:
        raise InputError(f"{foreign[0]}: not a file of a run recorded in {os.path.basename(prefix)}{MANIFEST_SUFFIX} "
                         f"or {os.path.basename(prefix)}{STATE_SUFFIX} ({len(foreign)} such files); a new run would "
                         f"write over it: move it away or choose another --out")
    if not old:
        return
    if not overwrite:
        raise InputError(f"{old[0]}: {os.path.dirname(os.path.abspath(prefix))} already holds a training run; "
                         f"pass --resume to continue it or --overwrite to replace it")
    kept = {os.path.realpath(p) for p in keep}
    removed = []
    for path in old:
        if os.path.realpath(path) in kept:
            log.warning("--overwrite: %s is read by this run; kept", path)
            continue
        os.unlink(path)
        removed.append(path)
    forget_run_files(prefix, removed)
    log.warning("--overwrite: removed %d files of the previous run at %s", len(removed), prefix)


# ------------------------------------------------------------------ what a run writes and reads
def run_file_names(base):
    """The longest names a run at ``DIR/base`` writes (the name-length check of ``--out``)."""
    return tuple(os.path.basename(p) for p in [*checkpoint_paths(base, 9999), *training_paths(base, 9999)]) + \
        (base + STATE_SUFFIX, base + MANIFEST_SUFFIX, base + LOG_SUFFIX)


def run_outputs(cfg, report=None, rank=0):
    """``core.outputs.Output`` of everything a run of ``cfg`` writes: ``--out`` (the folder of
    ``cfg.out`` and the run's files in it), the ``--json`` report, ``--tensorboard``."""
    folder = (os.path.dirname(cfg.out) or ".") if cfg.get("out") else None
    names = run_file_names(os.path.basename(cfg.out)) if folder else ()
    report = report.replace("{rank}", str(rank)) if report else None
    return [folder_output("--out", folder, names=names), file_output("--json", report),
            folder_output("--tensorboard", cfg.get("tensorboard") or None)]


def run_inputs(cfg):
    """``core.outputs.Input`` of the checkpoint a run of ``cfg`` reads: ``--teacher`` (its
    prefix, symbol and parameters), which no output may be."""
    try:
        prefix, epoch = parse_model_arg(cfg.get("teacher") or "")
    except InputError:
        return []  # no teacher, or one ``validate`` refuses in its own words
    label = f"--teacher {cfg.teacher}"
    return [Input(label, prefix)] + [Input(label, p) for p in checkpoint_paths(prefix, epoch)]


def check_run_outputs(cfg, report=None, rank=0):
    """``check_outputs`` of a run (before any data is read); returns the folders it creates."""
    return check_outputs(run_outputs(cfg, report, rank), run_inputs(cfg))


def _plain(value):
    """JSON round trip, so that a config read back from state.json compares equal to a live one."""
    return json.loads(json.dumps(value, default=str))


def changed_run_keys(saved_cfg, cfg):
    """Keys whose values differ between ``saved_cfg`` (from state.json) and ``cfg``,
    except those in ``RESUME_FREE_KEYS``; sorted.  Only keys both know are compared: a run
    saved by an older version predates keys added since (they keep their defaults); its renamed
    keys (``config.RENAMED_KEYS``) are compared under their new names."""
    from shrinkteanet.training.config import current_names

    old, new = _plain(current_names(saved_cfg)), _plain(dict(cfg))
    keys = (set(old) & set(new)) - RESUME_FREE_KEYS
    return sorted(k for k in keys if old.get(k) != new.get(k))


def check_resume_config(state_path, saved_cfg, cfg):
    """``InputError`` listing each changed key (old -> new) when a resume would change the run."""
    from shrinkteanet.training.config import current_names

    changed = changed_run_keys(saved_cfg or {}, cfg)
    if not changed:
        return
    old, new = _plain(current_names(saved_cfg or {})), _plain(dict(cfg))
    shown = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in changed[:8])
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    raise InputError(f"{state_path}: --resume with a config that changes the run in {', '.join(changed)} "
                     f"({shown}{more}); use the saved values or start a new run")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------ one run's hold on its folder
class RunClaim:
    """What one training holds of its output folder, from the lock to the end of the run.

    ``with RunClaim(prefix, ...) as claim:`` takes the lock (worker 0), refuses or replaces an
    old run (``prepare_fresh_run``; a resume of a run without a manifest gets one from its
    state), lists the log and the report in the manifest, then opens the log (``log``, a
    ``logutil.LogFile`` that kept the records logged so far).  When the run fails before any
    checkpoint exists at ``prefix``, the files it created go and so do the folders: the lock
    file, the manifest and the log; after a crash (anything but an ``InputError``) the log
    is moved beside the removed folder, or stays in a folder that existed before, and its
    path is logged.  Workers other than 0 only open their own log.
    """

    def __init__(self, prefix, *, rank=0, resume=False, overwrite=False, keep=(), report=None, log=None):
        self.prefix, self.rank, self.resume, self.overwrite = prefix, rank, resume, overwrite
        self.keep, self.report, self.log = tuple(keep), report, log
        self.folder = os.path.dirname(os.path.abspath(prefix))
        self.lock = None
        self.created = []
        self.claimed = False
        self.lock_existed = self.log_existed = self.manifest_existed = True

    @property
    def log_path(self):
        return self.prefix + LOG_SUFFIX if self.rank == 0 else f"{self.prefix}-train-rank{self.rank}.log"

    def __enter__(self):
        if self.rank != 0:
            self._open_log()
            return self
        self.created = missing_folders([self.folder])
        self.lock_existed = os.path.exists(os.path.join(self.folder, LOCK_NAME))
        try:
            self.lock = RunLock(self.folder).acquire()
            self._claim()
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def _claim(self):
        self.manifest_existed = os.path.exists(manifest_path(self.prefix))
        if not self.resume:
            prepare_fresh_run(self.prefix, self.overwrite, self.keep)
        elif listed_run_files(self.prefix) is None and read_state(self.prefix) is not None:
            record_run_files(self.prefix, [p for p in state_named_files(self.prefix, read_state(self.prefix))
                                           if os.path.lexists(p)])
        self.claimed = True
        # a log the old run did not list (kept by the user) is appended to, never listed
        self.log_existed = os.path.exists(self.log_path)
        fresh_log = self.log_path if self.log is not None and not self.log_existed else None
        record_run_files(self.prefix, [p for p in (fresh_log, self.report) if p])
        self._open_log()

    def _open_log(self):
        if self.log is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            self.log.open(self.log_path)

    def __exit__(self, kind, exc, tb):
        if self.log is not None:
            self.log.close()
        try:
            if exc is not None and self.rank == 0 and not run_files(self.prefix):
                self._leave_nothing(exc)
        finally:
            if self.lock is not None:
                self.lock.release()
        return False

    def _leave_nothing(self, exc):
        """The run failed with no checkpoint: remove what it created (class docstring)."""
        if self.claimed:
            own_log = self.log_path if self.log is not None and not self.log_existed else None
            kept = self._keep_log(own_log, crashed=not isinstance(exc, InputError))
            for path in self._own_files(own_log):
                if path != kept and os.path.isfile(path):
                    os.unlink(path)
        if not self.lock_existed and self.lock is not None:  # still held: no other run can be using it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.folder, LOCK_NAME))
        remove_created_folders(self.created)

    def _own_files(self, own_log):
        """The files this run created: a fresh run removed the old run's listed files first, so
        every file still listed is its own, and so is the manifest; a resume created only its log
        (and the manifest, when there was none)."""
        if not self.resume:
            listed = [p for p in listed_run_files(self.prefix) or [] if p != self.log_path or own_log]
            return listed + [manifest_path(self.prefix)]
        return [p for p in (own_log, None if self.manifest_existed else manifest_path(self.prefix)) if p]

    def _keep_log(self, path, crashed):
        """Where the log of a crashed run stays (None: not kept): beside the folder when the
        folder goes, else in it."""
        if not crashed or path is None or not os.path.isfile(path) or os.path.getsize(path) == 0:
            return None
        if self.folder in self.created:
            path = move_beside(path, self.folder)
        log.error("the log of this failed run: %s", path)
        return path


def move_beside(path, folder):
    """Move ``path`` to ``FOLDER-train.log`` (``-train-1.log``, ... when taken: never written over)."""
    for k in range(100):
        dest = f"{folder}-train{'' if k == 0 else f'-{k}'}.log"
        try:
            os.link(path, dest)
        except FileExistsError:
            continue
        except OSError:
            return path  # no hard links here: the log stays where it is
        os.unlink(path)
        return dest
    return path
