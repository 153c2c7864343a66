"""Issue 26 calibration: self-studied students and teachers at doubling budgets on one synthetic set.
Resumable: a run with train.json is done; a run with checkpoints resumes (--resume); evals skip when present.
Usage: calib.py QUEUE_NAME  (runs that queue's entries in order)"""
import copy, json, os, subprocess, sys, time
from shrinkteanet.study import demo

ROOT = "/work/calib"
DATA = os.path.join(ROOT, "synth")
SCALE = demo.get_scale("study")
SCALE["synth"] = dict(identities=2000, images_per_id=16, test_identities=600, pairs=6000, ijb_templates=700,
                      megaface_probes=100, megaface_probe_images=5, megaface_distractors=5000, difficulty=1.3)
CLI = [os.path.join(os.path.dirname(sys.executable), "shrinkteanet")]
TEACHERS = {"u2482": dict(units=(2, 4, 8, 2), filters=(16, 16, 32, 64, 128)),
            "u2222": dict(units=(2, 2, 2, 2), filters=(16, 16, 32, 64, 128))}
QUEUES = {
    "a": [("teacher", "u2482", 12), ("mfnr", "self", 12), ("mfnr", "self", 24), ("mfnr", "self", 6),
          ("mfnr", "self", 3), ("teacher", "u2482", 24), ("mfnr", "self", 48)],
    "b": [("mfn", "self", 12), ("mfn", "self", 24), ("teacher", "u2222", 12), ("mfn", "self", 6),
          ("mfn", "self", 3)],
}


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def run(cmd):
    log("$ " + " ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def train_args(kind, variant, epochs):
    sc = copy.deepcopy(SCALE)
    if kind == "teacher":
        sc["teacher_opts"] = TEACHERS[variant]
        sc["teacher_epochs"] = epochs
        return ["--config", "teacher_r90", *demo.teacher_overrides(sc)]
    sc["student_epochs"] = epochs
    return ["--config", f"{kind}_{variant}", *demo.student_overrides(sc, kind, seed=0)]


def main(queue):
    if not os.path.exists(os.path.join(DATA, "synth.json")):
        run([*CLI, *demo.synth_command(SCALE, DATA, 0), "--workers", "1"])
    for kind, variant, epochs in QUEUES[queue]:
        name = f"{kind}_{variant}_e{epochs}"
        rd = os.path.join(ROOT, "runs", name)
        tj = os.path.join(rd, "train.json")
        if not os.path.exists(tj):
            has_ckpt = os.path.isdir(rd) and any(f.endswith(".params") for f in os.listdir(rd))
            extra = ["--resume"] if has_ckpt else (["--overwrite"] if os.path.isdir(rd) else [])
            wall = run([*CLI, "train", *train_args(kind, variant, epochs), "--data", DATA, "--out", rd,
                        *extra, "--json", tj])
            with open(os.path.join(rd, "wall.json"), "w") as f:
                json.dump(dict(wall_s=wall, resumed=bool(extra == ["--resume"])), f)
        for cmd in demo.eval_commands(rd, DATA, SCALE):
            cmd = [str(c) if not hasattr(c, "resolve") else c.resolve() for c in cmd]
            js = cmd[cmd.index("--json") + 1]
            if not os.path.exists(js):
                run([*CLI, *cmd])
        log(f"done {name}")


if __name__ == "__main__":
    main(sys.argv[1])
