"""What the teacher cache saves the fair study (issue 26): one student run with the live teacher
and the same run reading the teacher's embeddings from ``cache-teacher``, side by side.

The fair scale's networks, image size and batch (``demo.SCALES["fair"]``) on a smaller synthetic
set (``--identities``, 16 images each); the teacher trains one epoch (its quality does not change
a step's cost).  Rounds alternate the two forms so a change of machine load hits both.  Each run
is a real ``shrinkteanet train`` child at ``OMP_NUM_THREADS=1`` (the study's one core per job);
img/s is the run's own ``img_per_s`` (its summary), wall s the child's.

    python bench/bench_fair_cache.py --out /tmp/fair_cache --steps 300 --rounds 2
"""
import argparse
import json
import os
import subprocess
import sys
import time

from shrinkteanet.study import demo


def _shrink(identities, epochs):
    scale = demo.get_scale("fair")
    scale["synth"].update(identities=identities, test_identities=50, pairs=200, val_pairs=200, ijb_templates=20,
                          megaface_probes=5, megaface_probe_images=2, megaface_distractors=20)
    scale.update(teacher_epochs=1, student_epochs=epochs)
    return scale


def _cli(args, threads=1):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", *args], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode:
        sys.exit(f"failed: shrinkteanet {' '.join(args)}\n{r.stderr[-3000:]}")
    return time.time() - t0


def _student(scale, out, data, config, source, tag):
    run = os.path.join(out, tag)
    over = demo.student_overrides(scale, "mfnr", 0)
    wall = _cli(["train", "--config", config, *over, *source, "--data", data, "--out", run, "--overwrite",
                 "--json", os.path.join(run, "train.json")])
    with open(os.path.join(run, "train.json")) as f:
        s = json.load(f)
    return dict(run=tag, steps=s["steps"], img_per_s=round(s["img_per_s"], 1), wall_s=round(wall, 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--identities", type=int, default=200)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", default="mfnr_stn_final,mfnr_stn")
    a = p.parse_args()
    per = a.identities * 16 // demo.get_scale("fair")["batch_size"]
    scale = _shrink(a.identities, max(1, a.steps // per))
    data, teacher = os.path.join(a.out, "synth"), os.path.join(a.out, "teacher")
    if not os.path.isfile(os.path.join(data, "train.rec")):
        _cli(demo.synth_command(scale, data), threads=2)
    if not os.path.isfile(os.path.join(teacher, "train.json")):
        _cli(["train", "--config", "teacher_r90", *demo.teacher_overrides(scale), "seed=0", "--data", data,
              "--out", teacher, "--overwrite", "--json", os.path.join(teacher, "train.json")])
    with open(os.path.join(teacher, "train.json")) as f:
        t = json.load(f)
    ckpt, cache = f"{t['prefix']},{t['checkpoint']}", os.path.join(a.out, "cache")
    cache_s = _cli(["cache-teacher", "--model", ckpt, "--data", data, "--out", cache, "--rebuild"])
    rows = []
    for rnd in range(a.rounds):
        for config in a.configs.split(","):
            both = demo.cache_use(config, demo.student_overrides(scale, "mfnr", 0)) == "both"
            cached = ["--teacher-cache", cache] + (["--teacher", ckpt] if both else [])
            for tag, source in (("live", ["--teacher", ckpt]), ("cache", cached)):
                rows.append(dict(_student(scale, a.out, data, config, source, f"{config}_{tag}"), round=rnd,
                                 config=config, form=tag))
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(dict(cache_teacher_s=round(cache_s, 1), images=a.identities * 16, load=os.getloadavg(),
                          rows=rows), indent=1))


if __name__ == "__main__":
    main()
