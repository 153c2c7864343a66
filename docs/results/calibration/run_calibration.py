"""Issue 26 calibration: self-studied students and teachers at doubling budgets on one synthetic set.
Resumable: a run with train.json is done; a run with checkpoints resumes (--resume); evals skip when present.
Usage: calib.py QUEUE_NAME  (runs that queue's entries in order)
       calib.py collect STUDY_JSON  (adds every finished run to STUDY_JSON's "runs", keeping the others)
       calib.py plot STUDY_JSON PNG  (accuracy against steps, one panel per protocol, one line per network)"""
import copy, json, os, subprocess, sys, time
from shrinkteanet.study import demo

# the folder of the runs; study.json names its files relative to it
ROOT = os.environ.get("CALIB_ROOT", os.path.abspath("calib"))
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
    "c": [("mfnr", "self", 48), ("mfn", "self", 48)],
    "d": [("teacher", "u2482", 48)],
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


def _read(path):
    with open(path) as f:
        return json.load(f)


def run_entry(rd):
    """One ``study.json`` entry of a finished, evaluated run folder ``rd``."""
    train, wall = _read(os.path.join(rd, "train.json")), _read(os.path.join(rd, "wall.json"))
    ver = _read(os.path.join(rd, "eval", "verification.json"))
    ijb = _read(os.path.join(rd, "eval", "ijbc.json"))
    sets = ("lfw", "cfp_fp", "agedb_30")
    entry = {k: ver[k]["accuracy"] for k in sets}
    entry.update(verification_std={k: ver[k]["accuracy_std"] for k in sets},
                 megaface_rank1_1k=_read(os.path.join(rd, "eval", "megaface.json"))["rank1"]["1000"],
                 ijbc_tar_at_far=ijb["tar_at_far"], ijbc_auc=ijb["auc"], final_losses=train["losses"],
                 epoch=train["epoch"], steps=train["steps"], schedule=train["schedule"],
                 img_per_s=train["img_per_s"], params_sha1=train["params_sha1"], wall_s=wall["wall_s"],
                 resumed=wall["resumed"], status="done")
    return entry


def collect(study_json):
    study = _read(study_json)
    for name in sorted(os.listdir(os.path.join(ROOT, "runs"))):
        rd = os.path.join(ROOT, "runs", name)
        if os.path.exists(os.path.join(rd, "eval", "ijbc.json")):
            study["runs"][name] = run_entry(rd)
    tmp = study_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(study, f, indent=1, sort_keys=True)
    os.replace(tmp, study_json)


PANELS = (("lfw", "LFW"), ("cfp_fp", "CFP-FP"), ("agedb_30", "AgeDB-30"), ("megaface_rank1_1k", "MegaFace rank-1 @1k"))


def plot(study_json, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {k: v for k, v in _read(study_json)["runs"].items() if v.get("status") == "done"}
    lines = sorted({k.rsplit("_e", 1)[0] for k in runs})
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for line in lines:
            pts = sorted((v["steps"], 100 * v[key]) for k, v in runs.items() if k.rsplit("_e", 1)[0] == line)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=line)
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("training steps (batch 64)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    if sys.argv[1] == "collect":
        collect(sys.argv[2])
    elif sys.argv[1] == "plot":
        plot(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
