"""`make demo` and `make reproduce-small`: the whole ShrinkTeaNet pipeline at a size a CPU runs.

Every stage is a real user command, run as a child process ``python -m shrinkteanet ...``
with its output passed through (so progress is visible the whole time):

1. ``data synth``   - synthetic training set, LFW/CFP-FP/AgeDB ``.bin``, IJB-C and MegaFace trees;
2. ``train``        - a small LResNet-E-IR teacher (the r90 family with few units and narrow stages);
3. ``train``        - small MobileFaceNet-family students (``mfn``, and ``mfnr`` whose stage widths equal
   the teacher's, ShrinkTeaNet Sec. 4), each self-studied, with the L2 embedding loss ("Student-1")
   and with ShrinkTeaNet's angular distillation (Eq. 4-6), same seed and schedule for the three;
4. ``eval verification|megaface|ijb`` for the teacher and every student;
5. ``REPORT.md`` laid out like the paper's Table 2 (``shrinkteanet.report_table``).

A stage whose outputs exist and whose command line is unchanged is not run again
(``<run>/.<stage>.cmd`` holds the command), so an interrupted run continues where it
stopped; ``force=True`` reruns everything.

Layout of ``out`` (the Makefile's ``eval-*`` targets default to ``student/`` and ``synth/``)::

    synth/                        data synth output
    teacher/model-*.params        teacher checkpoint; teacher/train.json; teacher/eval/{verification,megaface,ijbc}.json
    <net>_<method>[_s<seed>]/     the same for each student run (method: self, l2, stn)
    student/model-0001.params     copy of the headline student (the last network's ShrinkTeaNet run)
    REPORT.md, demo.json, *.png
"""
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from shrinkteanet.errors import InputError
from shrinkteanet.logutil import get_logger
from shrinkteanet.utils import write_json

log = get_logger(__name__)

#: student methods, in the paper's Table 2 order; value = (config suffix, overrides of the method)
METHODS = {"self": "self", "l2": "l2", "stn": "stn"}

#: Demo sizes.  ``synth``: keyword arguments of ``data synth`` (flags with ``-`` for ``_``);
#: ``teacher``/``students``: config overrides; ``student_opts``: per-network ``net_opts``.
#: Teacher stage widths (8/16/32/64 at tiny, 16/32/64/128 at small) are those the ``mfnr``
#: student copies, as MobileFaceNet-R copies the r90's 64/128/256/512.
#: Margin head of every demo network (teacher and all students alike, so methods stay comparable).
#: ArcFace at s=64, m=0.5 from scratch barely trains networks this small on 1,600 images (the demo
#: teacher reached 63% on the synthetic LFW); CosFace with s=30, m=0.2 took the same teacher to 83%.
SMALL_HEAD = ("loss=cosface", "margin_s=30", "margin_m1=1.0", "margin_m2=0.0", "margin_m3=0.2")

SCALES = {
    "tiny": dict(
        image_size=32,
        synth=dict(identities=12, images_per_id=6, test_identities=12, pairs=40, ijb_templates=8,
                   megaface_probes=3, megaface_probe_images=2, megaface_distractors=10),
        teacher_opts=dict(units=(1, 1, 1, 1), filters=(8, 8, 16, 32, 64)),
        student_opts=dict(mfn=dict(blocks=(1, 1, 1, 1), filters=(8, 8, 16, 16, 64)),
                          mfnr=dict(blocks=(1, 1, 1, 1), filters=(8, 16, 32, 64, 64)),
                          mv1=dict(multiplier=0.25, blocks=(1, 1, 1, 1)),
                          mv2=dict(multiplier=0.25, blocks=(1, 1, 1, 1, 1, 1, 1), last_channels=64)),
        emb_size=32, students=("mfnr",), batch_size=24, teacher_epochs=2, student_epochs=1, lr=0.05,
        eval_batch=32, head=SMALL_HEAD,
    ),
    "small": dict(
        image_size=64,
        synth=dict(identities=100, images_per_id=16, test_identities=100, pairs=600, ijb_templates=80,
                   megaface_probes=20, megaface_probe_images=4, megaface_distractors=1000),
        teacher_opts=dict(units=(1, 1, 1, 1), filters=(16, 16, 32, 64, 128)),
        student_opts=dict(mfn=dict(blocks=(1, 1, 2, 1), filters=(16, 16, 32, 32, 128)),
                          mfnr=dict(blocks=(1, 1, 2, 1), filters=(16, 32, 64, 128, 128)),
                          mv1=dict(multiplier=0.25, blocks=(1, 1, 1, 1)),
                          mv2=dict(multiplier=0.25, blocks=(1, 1, 1, 1, 1, 1, 1), last_channels=128)),
        emb_size=128, students=("mfn", "mfnr"), batch_size=64, teacher_epochs=8, student_epochs=4, lr=0.1,
        eval_batch=64, head=SMALL_HEAD,
    ),
}

#: the environment knob of the test suite and the Makefile
SCALE_ENV = "SHRINKTEANET_DEMO_SCALE"


def get_scale(scale=None):
    """The scale dict (a copy) by name; default from ``$SHRINKTEANET_DEMO_SCALE`` or ``small``."""
    name = scale or os.environ.get(SCALE_ENV) or "small"
    if name not in SCALES:
        raise InputError(f"demo scale {name!r} unknown; choose one of {', '.join(SCALES)}")
    s = copy.deepcopy(SCALES[name])
    s["name"] = name
    return s


def _opts_text(opts):
    """``net_opts`` value as the config parser reads it: a Python dict literal without spaces,
    so that it survives the recipes' word splitting of ``EXTRA``."""
    def val(v):
        if isinstance(v, (list, tuple)):
            return "(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        return repr(v)

    return "{" + ",".join(f"{k!r}:{val(v)}" for k, v in opts.items()) + "}"


def _lr_steps(epochs):
    """Two decays by 10 at 60% and 85% of the epochs (InsightFace's step schedule, shortened)."""
    steps = sorted({max(1, int(round(epochs * f))) for f in (0.6, 0.85)} - {epochs})
    return "[" + ",".join(str(s) for s in steps) + "]"


def teacher_overrides(scale):
    """Config overrides (``key=value``) of the demo teacher (config ``teacher_r90``)."""
    return [f"net_opts={_opts_text(scale['teacher_opts'])}", f"emb_size={scale['emb_size']}",
            f"image_size={scale['image_size']}", f"batch_size={scale['batch_size']}", f"lr={scale['lr']}",
            f"num_epochs={scale['teacher_epochs']}", "lr_step_unit=epoch",
            f"lr_steps={_lr_steps(scale['teacher_epochs'])}", "verbose=0", "frequent=10", "workers=1",
            *scale["head"]]


def student_overrides(scale, network, seed=0):
    """Config overrides of a demo student of ``network`` (any method): the student's tiny
    ``net_opts``, the teacher's architecture (``teacher_net_opts``) and the shared schedule."""
    if network not in scale["student_opts"]:
        raise InputError(f"demo: no small options for network {network!r}; "
                         f"choose one of {', '.join(scale['student_opts'])}")
    return [f"net_opts={_opts_text(scale['student_opts'][network])}", f"emb_size={scale['emb_size']}",
            f"image_size={scale['image_size']}", "teacher_network=r90",
            f"teacher_net_opts={_opts_text(scale['teacher_opts'])}", f"teacher_emb_size={scale['emb_size']}",
            f"batch_size={scale['batch_size']}", f"lr={scale['lr']}", f"num_epochs={scale['student_epochs']}",
            "lr_step_unit=epoch", f"lr_steps={_lr_steps(scale['student_epochs'])}", f"seed={seed}", "verbose=0",
            "frequent=10", "workers=1", *scale["head"]]


def recipe_extra(scale, network):
    """The ``EXTRA`` overrides that make a paper recipe run at the demo's small scale
    (used by the Makefile's ``train-*`` targets when no ``DATA`` is given).  ``network``:
    ``r90``/``r100`` (teachers, the demo teacher's shape), a student network, or
    ``lowres`` (Karlekar et al.: a student of the teacher's architecture at half the image size)."""
    if network in ("r90", "r100"):
        return teacher_overrides(scale)
    if network == "lowres":
        over = student_overrides(scale, "mfn")
        over[0] = f"net_opts={_opts_text(scale['teacher_opts'])}"
        return over + [f"lowres_size={scale['image_size'] // 2}"]
    return student_overrides(scale, network)


def synth_command(scale, out_dir, seed=0):
    cmd = ["data", "synth", out_dir, "--seed", str(seed), "--image-size", str(scale["image_size"])]
    for k, v in scale["synth"].items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    return cmd


class Runner:
    """Runs ``python -m shrinkteanet ARGS`` child processes, skipping a stage whose
    outputs exist and whose command file matches; records each stage's wall time."""

    def __init__(self, python=None, force=False, dry_run=False):
        self.python = python or sys.executable
        self.force = force
        self.dry_run = dry_run
        self.times = []  # (stage name, seconds, skipped)

    def run(self, name, args, outputs, stamp):
        cmd = [self.python, "-m", "shrinkteanet"] + [str(a) for a in args]
        text = " ".join(shlex.quote(c) for c in ["shrinkteanet"] + cmd[3:])
        if not self.force and all(os.path.exists(p) for p in outputs) and os.path.isfile(stamp):
            with open(stamp) as f:
                if f.read().strip() == text:
                    log.info("[%s] up to date, skipped: %s", name, text)
                    self.times.append((name, 0.0, True))
                    return
        log.info("[%s] %s", name, text)
        if self.dry_run:
            self.times.append((name, 0.0, True))
            return
        if os.path.exists(stamp):
            os.remove(stamp)
        t0 = time.time()
        proc = subprocess.run(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        dt = time.time() - t0
        if proc.returncode != 0:
            raise InputError(f"demo stage {name!r} failed (exit {proc.returncode}): {text}")
        missing = [p for p in outputs if not os.path.exists(p)]
        if missing:
            raise InputError(f"demo stage {name!r} finished but did not write {missing[0]}")
        os.makedirs(os.path.dirname(stamp) or ".", exist_ok=True)
        with open(stamp, "w") as f:
            f.write(text + "\n")
        self.times.append((name, dt, False))
        log.info("[%s] done in %.1f s", name, dt)


def _trained_model(run_dir):
    """``PREFIX,EPOCH`` of a finished training run from its ``train.json``."""
    with open(os.path.join(run_dir, "train.json")) as f:
        s = json.load(f)
    if not s.get("checkpoint"):
        raise InputError(f"{run_dir}/train.json: the run saved no checkpoint")
    return f"{s['prefix']},{s['checkpoint']}"


def evaluate_all(runner, name, run_dir, data_dir, scale):
    """The three protocols of the paper on one checkpoint, written to ``run_dir/eval``."""
    model = _trained_model(run_dir)
    ev = os.path.join(run_dir, "eval")
    common = ["--model", model, "--image-size", str(scale["image_size"]), "--batch-size", str(scale["eval_batch"])]
    runner.run(f"{name}: eval verification", ["eval", "verification", "--data-dir", data_dir,
                                               "--targets", "lfw,cfp_fp,agedb_30", *common,
                                               "--out", os.path.join(ev, "verification"),
                                               "--json", os.path.join(ev, "verification.json")],
               [os.path.join(ev, "verification.json")], os.path.join(ev, ".verification.cmd"))
    runner.run(f"{name}: eval megaface", ["eval", "megaface", "--megaface-root", os.path.join(data_dir, "megaface"),
                                           *common, "--out", os.path.join(ev, "megaface"),
                                           "--json", os.path.join(ev, "megaface.json")],
               [os.path.join(ev, "megaface.json")], os.path.join(ev, ".megaface.cmd"))
    runner.run(f"{name}: eval ijb", ["eval", "ijb", "--image-path", os.path.join(data_dir, "IJBC"), "--target", "IJBC",
                                      *common, "--out", os.path.join(ev, "ijbc"),
                                      "--json", os.path.join(ev, "ijbc.json")],
               [os.path.join(ev, "ijbc.json")], os.path.join(ev, ".ijbc.cmd"))


def run_name(network, method, seed, seeds):
    return f"{network}_{method}" + (f"_s{seed}" if len(seeds) > 1 else "")


def prepare_data(out, scale=None, runner=None, seed=0):
    """Stage 1 only: the synthetic set in ``out/synth`` (the train-* targets' small data)."""
    scale = scale if isinstance(scale, dict) else get_scale(scale)
    runner = runner or Runner()
    data = os.path.join(out, "synth")
    runner.run("synthetic data", synth_command(scale, data, seed),
               [os.path.join(data, f) for f in ("train.rec", "lfw.bin", "cfp_fp.bin", "agedb_30.bin",
                                                "IJBC", "megaface")],
               os.path.join(out, ".synth.cmd"))
    return data


def run_demo(out, scale=None, seeds=(0,), students=None, methods=tuple(METHODS), force=False, dry_run=False,
             python=None, title="ShrinkTeaNet demo"):
    """Run the whole pipeline into ``out`` and write ``out/REPORT.md``; returns the report path.

    ``seeds``: one student run per seed and method (the teacher and data use seed 0);
    ``students``: networks (default: the scale's ``mfn``/``mfnr``)."""
    scale = scale if isinstance(scale, dict) else get_scale(scale)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise InputError("demo: give at least one seed")
    students = tuple(students or scale["students"])
    for m in methods:
        if m not in METHODS:
            raise InputError(f"demo: method {m!r} unknown; choose from {', '.join(METHODS)}")
    os.makedirs(out, exist_ok=True)
    runner = Runner(python=python, force=force, dry_run=dry_run)
    t_start = time.time()
    data = prepare_data(out, scale, runner)

    teacher_dir = os.path.join(out, "teacher")
    runner.run("teacher: train", ["train", "--config", "teacher_r90", "--data", data, "--out", teacher_dir,
                                  *teacher_overrides(scale), "seed=0", "--json",
                                  os.path.join(teacher_dir, "train.json")],
               [os.path.join(teacher_dir, "train.json")], os.path.join(teacher_dir, ".train.cmd"))
    if dry_run:
        log.info("dry run: stopping before the evaluations (no checkpoints)")
        return None
    evaluate_all(runner, "teacher", teacher_dir, data, scale)
    teacher = _trained_model(teacher_dir)

    runs = []
    for seed in seeds:
        for net in students:
            for method in methods:
                name = run_name(net, method, seed, seeds)
                rdir = os.path.join(out, name)
                runner.run(f"{name}: train", ["train", "--config", f"{net}_{METHODS[method]}", "--data", data,
                                              "--out", rdir, "--teacher", teacher,
                                              *student_overrides(scale, net, seed),
                                              "--json", os.path.join(rdir, "train.json")],
                           [os.path.join(rdir, "train.json")], os.path.join(rdir, ".train.cmd"))
                evaluate_all(runner, name, rdir, data, scale)
                runs.append(dict(network=net, method=method, seed=seed, dir=name))

    _publish_student(out, runs[-1]["dir"], scale)
    from shrinkteanet import report_table

    elapsed = time.time() - t_start
    meta = dict(title=title, scale=scale["name"], image_size=scale["image_size"], seeds=list(seeds),
                students=list(students), methods=list(methods), elapsed_s=elapsed,
                stages=[dict(name=n, seconds=s, skipped=k) for n, s, k in runner.times],
                teacher=dict(dir="teacher", network="r90", opts=scale["teacher_opts"]),
                student_opts={n: scale["student_opts"][n] for n in students},
                synth=scale["synth"], emb_size=scale["emb_size"], head=" ".join(scale["head"]),
                schedule=dict(batch_size=scale["batch_size"], lr=scale["lr"],
                              teacher_epochs=scale["teacher_epochs"], student_epochs=scale["student_epochs"]),
                runs=runs, date=time.strftime("%Y-%m-%d %H:%M"))
    write_json(os.path.join(out, "demo.json"), meta)
    path = report_table.write_report(out, meta)
    log.info("report: %s (%.1f min in all)", path, elapsed / 60)
    return path


def _publish_student(out, run_dir, scale):
    """Copy the headline student to ``out/student/model-{symbol.json,0001.params}``, where the
    Makefile's eval-* targets look by default, with its input size in ``image_size``."""
    prefix, epoch = _trained_model(os.path.join(out, run_dir)).rsplit(",", 1)
    dst = os.path.join(out, "student")
    os.makedirs(dst, exist_ok=True)
    shutil.copyfile(f"{prefix}-symbol.json", os.path.join(dst, "model-symbol.json.tmp"))
    os.replace(os.path.join(dst, "model-symbol.json.tmp"), os.path.join(dst, "model-symbol.json"))
    shutil.copyfile("%s-%04d.params" % (prefix, int(epoch)), os.path.join(dst, "model-0001.params.tmp"))
    os.replace(os.path.join(dst, "model-0001.params.tmp"), os.path.join(dst, "model-0001.params"))
    with open(os.path.join(dst, "image_size"), "w") as f:
        f.write(f"{scale['image_size']}\n")
    with open(os.path.join(dst, "SOURCE"), "w") as f:
        f.write(f"{prefix},{epoch}\n")


def reproduce_small(out, scale=None, seeds=(0, 1, 2), **kw):
    """``make reproduce-small``: the demo with several seeds per method; the report adds
    mean and std over seeds and whether ShrinkTeaNet > L2 > self-studied on every protocol."""
    return run_demo(out, scale=scale, seeds=seeds, title="ShrinkTeaNet reproduce-small", **kw)
