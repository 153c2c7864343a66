"""Study throughput: (1) one training's speed with 1 and 2 OpenMP threads, per kind of run;
(2) the same study stages at ``--jobs 2`` (one thread each) vs ``--jobs 1`` (the faster thread
count of (1)), wall time, target >= 1.7x.  Writes the "study" section of docs/benchmarks.md.

Run: ``python bench/bench_study.py [--keep DIR]`` on an otherwise idle machine (about 10 min).
"""
import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import _common

from shrinkteanet.study import demo
from shrinkteanet.study import scheduler as study

#: the study's own shapes at a size that runs in minutes: its teacher and MFN-R student, fewer
#: identities and epochs, two methods x two seeds
BENCH_SYNTH = dict(identities=120, images_per_id=16, test_identities=100, pairs=600, ijb_templates=120,
                   megaface_probes=20, megaface_probe_images=4, megaface_distractors=500, difficulty=1.0)


def bench_scale():
    scale = demo.get_scale("study")
    scale = copy.deepcopy(scale)
    scale.update(name="bench", synth=BENCH_SYNTH, teacher_epochs=2, student_epochs=2, seeds=(0, 1),
                 methods=("self", "stn_w10"))
    return scale


def train_speed(work, scale, kind, threads, steps=120):
    """img/s of one training (``kind``: teacher | self | stn_w10) with ``threads`` OpenMP threads."""
    data = os.path.join(work, "synth")
    out = os.path.join(work, f"speed_{kind}_{threads}")
    shutil.rmtree(out, ignore_errors=True)
    if kind == "teacher":
        args = ["--config", "teacher_r90", *demo.teacher_overrides(scale)]
    else:
        suffix, extra = demo.study_methods()[kind]
        args = ["--config", f"mfnr_{suffix}", *demo.student_overrides(scale, "mfnr"), *extra,
                "--teacher", study.CheckpointOf(os.path.join(work, "teacher", "train.json")).resolve()]
    cmd = [sys.executable, "-m", "shrinkteanet", "train", *args, "--data", data, "--out", out,
           "--max-batches", str(steps), "--json", os.path.join(out, "train.json")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t0
    with open(os.path.join(out, "train.json")) as f:
        return json.load(f)["img_per_s"], wall


def study_wall(work, scale, jobs, threads):
    """Wall time of every stage after the data at ``jobs`` side by side (data copied in, not timed)."""
    out = os.path.join(work, f"jobs{jobs}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    shutil.copytree(os.path.join(work, "synth"), os.path.join(out, "synth"))
    shutil.copyfile(os.path.join(work, ".synth.cmd"), os.path.join(out, ".synth.cmd"))
    stages, _ = demo.plan(out, scale)
    sched = study.Scheduler(jobs=jobs, threads=threads)
    t0 = time.time()
    sched.run(stages)
    return time.time() - t0, sum(not t.skipped for t in sched.times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", default="", help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="bench_study_")
    scale = bench_scale()
    load0 = _common.loadavg()
    study.Scheduler(jobs=2).run([demo.data_stage(work, scale)])
    teacher = demo._train_and_eval("teacher", os.path.join(work, "teacher"),
                                   ["--config", "teacher_r90", *demo.teacher_overrides(scale), "seed=0"],
                                   os.path.join(work, "synth"), scale, after=())[:1]
    study.Scheduler(jobs=1).run(teacher)

    speeds = {}
    for kind in ("teacher", "self", "stn_w10"):
        for threads in (1, 2):
            speeds[(kind, threads)] = train_speed(work, scale, kind, threads)
    best1 = max((1, 2), key=lambda t: sum(speeds[(k, t)][0] for k in ("teacher", "self", "stn_w10")))
    w1, n1 = study_wall(work, scale, jobs=1, threads=best1)
    w2, n2 = study_wall(work, scale, jobs=2, threads=1)
    assert n1 == n2, (n1, n2)

    lines = [f"## Study scheduler: --jobs 2 vs --jobs 1 ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{os.cpu_count()} cores, load {load0:.1f} at start)\n",
             "One training's speed (120 steps, batch 64, 32x32, the study's networks), img/s:\n",
             "| run | 1 thread | 2 threads | 2 vs 1 |", "|---|---|---|---|"]
    for kind in ("teacher", "self", "stn_w10"):
        a, b = speeds[(kind, 1)][0], speeds[(kind, 2)][0]
        lines.append(f"| {kind} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    lines += ["", f"The same {n1} stages (teacher, MFN-R self-studied and ShrinkTeaNet w=10 x 2 seeds, each run's "
                  f"evaluations; data made once beforehand):\n",
              "| mode | wall s | speed-up |", "|---|---|---|",
              f"| --jobs 1, {best1} thread(s) (the faster of 1 and 2) | {w1:.1f} | 1.00x |",
              f"| --jobs 2, 1 thread each | {w2:.1f} | **{w1 / w2:.2f}x** (target >= 1.7x) |"]
    text = "\n".join(lines) + "\n"
    print(text)
    _common.write_marked_section("study", text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
