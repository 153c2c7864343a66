"""The stage scheduler of ``make demo`` and ``make reproduce-small``: a plan of stages, each a
list of ``shrinkteanet`` child commands that writes one folder, run side by side on every core.

A ``Stage`` names the stages it waits for (``after``), the files it must leave (``outputs``)
and the folder it writes (``folder``).  ``Scheduler(jobs=N).run(stages)`` starts up to N stages
at once in plan order as their dependencies finish; each child gets its own thread settings
(``OMP_NUM_THREADS`` = ``threads``, default cores // jobs), and
no two running stages share a folder, so one run folder never has two writers.  A stage whose
outputs exist and whose stamp file holds the same commands is skipped (a rerun continues
where the last one stopped); with ``jobs > 1`` each stage's output goes to
``<folder>/<stage file name>.log`` and the console shows one line per start and finish.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class CheckpointOf:
    """A command argument known only once another stage has run: ``PREFIX,EPOCH`` of the final
    checkpoint of the training run whose summary (``shrinkteanet train --json``) is ``train_json``."""

    train_json: str

    def resolve(self):
        if not os.path.isfile(self.train_json):
            return f"<final checkpoint of {self.train_json}>"
        with open(self.train_json) as f:
            summary = json.load(f)
        if not summary.get("checkpoint"):
            raise InputError(f"{self.train_json}: the run saved no checkpoint")
        return f"{summary['prefix']},{summary['checkpoint']}"


@dataclass(frozen=True)
class ResumeOrOverwrite:
    """The ``train`` flag of a resumable stage (issue 26): ``--resume`` when the run at ``prefix``
    left a resume state (``PREFIX-state.json``: a stage killed midway goes on from its last
    checkpoint), else ``--overwrite`` (start afresh).  The stamp records ``--overwrite`` either
    way, so a resumed stage is the same stage as a fresh one and is skipped once it finished."""

    prefix: str

    def resolve(self):
        return "--resume" if os.path.isfile(f"{self.prefix}-state.json") else "--overwrite"

    def stamp(self):
        return "--overwrite"


def resolve_arg(arg):
    """A command argument as the child process gets it."""
    return arg.resolve() if isinstance(arg, (CheckpointOf, ResumeOrOverwrite)) else str(arg)


def stamp_arg(arg):
    """A command argument as the stage's stamp records it."""
    return arg.stamp() if isinstance(arg, ResumeOrOverwrite) else resolve_arg(arg)


@dataclass
class Stage:
    """One schedulable unit: ``commands`` (each a ``shrinkteanet`` argument list) run in order."""

    name: str
    commands: list
    outputs: list
    folder: str
    after: tuple = ()
    stamp: str = ""

    def __post_init__(self):
        if not self.stamp:
            self.stamp = os.path.join(self.folder, f".{slug(self.name)}.cmd")

    def text(self):
        """The stamp's content: every command as a shell line."""
        return "\n".join(" ".join(shlex.quote(stamp_arg(c)) for c in ["shrinkteanet", *cmd])
                         for cmd in self.commands)

    def up_to_date(self):
        if not (os.path.isfile(self.stamp) and all(os.path.exists(p) for p in self.outputs)):
            return False
        with open(self.stamp) as f:
            return f.read().strip() == self.text().strip()


@dataclass
class StageTime:
    name: str
    seconds: float
    skipped: bool
    started: float = 0.0
    folder: str = ""


@dataclass
class _Running:
    stage: Stage
    procs: list = field(default_factory=list)
    index: int = 0
    t0: float = 0.0
    log_file: object = None


def slug(name):
    """A file-name form of a stage name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def default_threads(jobs, cores=None):
    """OpenMP threads per job: the cores shared out evenly, at least one."""
    cores = cores or os.cpu_count() or 1
    return max(1, int(cores) // max(1, int(jobs)))


def check_plan(stages):
    """Refuse a plan with a duplicate name, an unknown or later dependency, or two stages
    writing one folder without an order between them."""
    seen = {}
    for st in stages:
        if st.name in seen:
            raise InputError(f"study plan: stage {st.name!r} twice")
        for dep in st.after:
            if dep not in seen:
                raise InputError(f"study plan: stage {st.name!r} waits for {dep!r}, which is not planned before it")
        seen[st.name] = st
    ancestors = {}
    for st in stages:
        ancestors[st.name] = set(st.after).union(*(ancestors[d] for d in st.after)) if st.after else set()
    by_folder = {}
    for st in stages:
        for other in by_folder.get(st.folder, []):
            if other not in ancestors[st.name]:
                raise InputError(f"study plan: {st.name!r} and {other!r} both write {st.folder} with no order")
        by_folder.setdefault(st.folder, []).append(st.name)


class Scheduler:
    """Runs a plan of ``Stage``s with up to ``jobs`` at a time (see the module docstring)."""

    def __init__(self, jobs=1, threads=0, python=None, force=False, dry_run=False, poll_s=0.2):
        if int(jobs) < 1:
            raise InputError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        self.threads = int(threads) or default_threads(self.jobs)
        self.python = python or sys.executable
        self.force = force
        self.dry_run = dry_run
        self.poll_s = poll_s
        self.times = []
        self.max_running = 0
        self.writers_seen = []  # (folder, set of running stage names) whenever a stage starts

    # ------------------------------------------------------------------ child processes
    def child_env(self):
        return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(self.threads))

    def _spawn(self, run):
        cmd = [self.python, "-m", "shrinkteanet", *[resolve_arg(a) for a in run.stage.commands[run.index]]]
        out = run.log_file if run.log_file is not None else None
        return subprocess.Popen(cmd, env=self.child_env(), stdout=out, stderr=subprocess.STDOUT if out else None)

    def _start(self, stage, running):
        folder_users = {r.stage.name for r in running if r.stage.folder == stage.folder}
        self.writers_seen.append((stage.folder, folder_users | {stage.name}))
        if folder_users:
            raise RuntimeError(f"scheduler: {stage.name} would write {stage.folder} beside {folder_users}")
        os.makedirs(stage.folder, exist_ok=True)
        if os.path.exists(stage.stamp):
            os.remove(stage.stamp)
        run = _Running(stage, t0=time.time())
        if self.jobs > 1:
            run.log_file = open(os.path.join(stage.folder, f"{slug(stage.name)}.log"), "ab")
        log.info("[%s] start: %s", stage.name, stage.text().replace("\n", " && "))
        run.procs.append(self._spawn(run))
        return run

    def _advance(self, run):
        """Poll one running stage: None while running, else its exit status (0 when every command passed)."""
        rc = run.procs[-1].poll()
        if rc is None:
            return None
        if rc != 0 or run.index + 1 == len(run.stage.commands):
            return rc
        run.index += 1
        run.procs.append(self._spawn(run))
        return None

    def _finish(self, run, rc):
        st = run.stage
        if run.log_file is not None:
            run.log_file.close()
        dt = time.time() - run.t0
        if rc != 0:
            where = f" (log: {run.log_file.name})" if run.log_file is not None else ""
            raise InputError(f"stage {st.name!r} failed (exit {rc}){where}: "
                             + " ".join(map(str, st.commands[run.index])))
        missing = [p for p in st.outputs if not os.path.exists(p)]
        if missing:
            raise InputError(f"stage {st.name!r} finished but did not write {missing[0]}")
        with open(st.stamp, "w") as f:
            f.write(st.text() + "\n")
        self.times.append(StageTime(st.name, dt, False, run.t0, st.folder))
        log.info("[%s] done in %.1f s", st.name, dt)

    # ------------------------------------------------------------------ the loop
    def run(self, stages):
        """Run ``stages`` (plan order = priority); returns ``self.times``.  A failure stops
        the other running stages and raises ``InputError``."""
        check_plan(stages)
        done, pending, running = set(), list(stages), []
        try:
            while pending or running:
                self._fill(pending, running, done)
                for run in list(running):
                    rc = self._advance(run)
                    if rc is not None:
                        running.remove(run)
                        self._finish(run, rc)
                        done.add(run.stage.name)
                if running:
                    time.sleep(self.poll_s)
        except BaseException:
            for run in running:
                for p in run.procs:
                    if p.poll() is None:
                        p.terminate()
                        p.wait()
            raise
        return self.times

    def _fill(self, pending, running, done):
        """Start ready stages (dependencies done, folder free) in plan order, up to ``jobs``."""
        for st in list(pending):
            if not all(d in done for d in st.after):
                continue
            if not self.force and st.up_to_date():
                pending.remove(st)
                done.add(st.name)
                self.times.append(StageTime(st.name, 0.0, True, time.time(), st.folder))
                log.info("[%s] up to date, skipped", st.name)
                continue
            if self.dry_run:
                pending.remove(st)
                done.add(st.name)
                log.info("[%s] would run: %s", st.name, st.text().replace("\n", " && "))
                self.times.append(StageTime(st.name, 0.0, True, time.time(), st.folder))
                continue
            if len(running) >= self.jobs or any(r.stage.folder == st.folder for r in running):
                continue
            pending.remove(st)
            running.append(self._start(st, running))
            self.max_running = max(self.max_running, len(running))
