"""Recipes (one shell script per paper row) and the Makefile targets that run them.

Every recipe must parse (``bash -n``), and its ``--dry-run`` must print the exact training
command and resolve the config it would train with through ``shrinkteanet config`` (a
typo in a key fails there), with the paper's hyper-parameters unless overridden."""
import json
import os
import re
import subprocess
import sys

import pytest
from easydict import EasyDict

from shrinkteanet.training import config
from shrinkteanet.study import demo
from shrinkteanet.methods.base import stage_rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes")
SCRIPTS = sorted(f[:-3] for f in os.listdir(RECIPES) if f.endswith(".sh") and not f.startswith("_") and f != "eval_all.sh")
#: recipe with a mode argument -> its modes: ``lowres.sh kt`` is the paper row lowres_kt
MODES = {"lowres": ("kt", "kd", "ktkd")}
ROWS = sorted(f"{s}_{m}" for s in SCRIPTS for m in MODES.get(s, ())) + [s for s in SCRIPTS if s not in MODES]


def _command(row):
    """``recipes/SCRIPT.sh [MODE]`` of a paper row."""
    script, _, mode = row.rpartition("_")
    if script in MODES and mode in MODES[script]:
        return [os.path.join(RECIPES, f"{script}.sh"), mode]
    return [os.path.join(RECIPES, f"{row}.sh")]

#: recipe -> (config name, network, distill) the dry run must resolve
EXPECTED = {"teacher_r90": ("teacher_r90", "r90", "none"), "teacher_r100": ("teacher_r100", "r100", "none"),
            "mfn_margin": ("mfn_margin", "mfn", "margin"),
            "mfn_adadistill": ("mfn_adadistill", "mfn", "adadistill"), "mfn_ekd": ("mfn_ekd", "mfn", "ekd")}
for _net in ("mv1", "mv2", "mfn", "mfnr"):
    for _m in ("self", "l2", "stn"):
        EXPECTED[f"{_net}_{_m}"] = (f"{_net}_{_m}", _net, "none" if _m == "self" else _m)
for _m in ("kt", "kd", "ktkd"):
    # Karlekar et al.: the low-resolution student has the teacher's architecture by default
    EXPECTED[f"lowres_{_m}"] = (f"mfn_lowres_{_m}", "r90", f"lowres_{_m}")


def _cli():
    exe = os.path.join(os.path.dirname(sys.executable), "shrinkteanet")
    return exe if os.path.exists(exe) else "shrinkteanet"


def _dry_run(row, tmp_path, **env):
    e = dict(os.environ, TMPDIR=str(tmp_path), SHRINKTEANET=_cli(), DATA="/data/faces_emore", OUT=str(tmp_path / "o"))
    e.pop("EXTRA", None)
    e.update(env)
    return subprocess.run(["bash", *_command(row), "--dry-run"], env=e, capture_output=True, text=True, timeout=60)


def test_dry_run_prints_the_lr_steps_rescaled_to_the_global_batch(tmp_path):
    r = _dry_run("mfnr_stn", tmp_path, TEACHER="/t/model,7", EXTRA="batch_size=128")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("lr_steps (step schedule): 100000,160000,220000 batches of 512 images -> batches 400000,640000,880000 "
            "at global batch 128") in r.stdout.splitlines()


def test_every_paper_row_has_a_recipe():
    assert set(ROWS) == set(EXPECTED), set(ROWS) ^ set(EXPECTED)


@pytest.mark.parametrize("script", SCRIPTS + ["eval_all", "_common"])
def test_recipe_parses(script):
    r = subprocess.run(["bash", "-n", os.path.join(RECIPES, f"{script}.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("row", ROWS)
def test_dry_run_resolves_the_paper_config(row, tmp_path):
    r = _dry_run(row, tmp_path, GPUS="0,1,2,3", TEACHER="/t/model,7")
    assert r.returncode == 0, r.stdout + r.stderr
    name, network, distill = EXPECTED[row]
    cmd = [ln for ln in r.stdout.splitlines() if ln.startswith("+ ")]
    assert len(cmd) == 1 and f" train --config {name} " in cmd[0]
    assert "--data /data/faces_emore" in cmd[0] and "--gpus 0\\,1\\,2\\,3" in cmd[0]
    assert ("--teacher /t/model\\,7" in cmd[0]) == (distill != "none")  # self-studied rows need no teacher
    with open(tmp_path / f"recipe-{row.replace('lowres_', 'r90_lowres_')}.json") as f:
        cfg = json.load(f)
    assert (cfg["config_name"], cfg["network"], cfg["distill"]) == (name, network, distill)
    # ShrinkTeaNet Sec. 4.2: batch 512 over the GPUs, lr 0.1, momentum 0.9; data from DATA
    assert (cfg["batch_size"], cfg["lr"], cfg["momentum"]) == (512, 0.1, 0.9)
    assert cfg["data_dir"] == "/data/faces_emore" and cfg["val_dir"] == "/data/faces_emore"
    if distill == "stn":
        # Eq. 6: lambda_4 = 1 and each earlier stage half the next
        assert cfg["distill_stages"] == [1, 2, 3, 4] and stage_rules.distill_lambdas(EasyDict(cfg)) == [0.125, 0.25, 0.5, 1]
    if distill == "l2":
        # Student-1 (Sec. 4.3): Eq. 7 with the l2 distance at all four stages
        assert cfg["distill_stages"] == [1, 2, 3, 4] and cfg["l2_lambda"] == 0.001
    if row.startswith("lowres"):
        assert cfg["lowres_size"] == 56
    if distill == "adadistill":
        # AdaArcDistill as the authors' release: ArcFace s=64, m=0.45, sample-weighted alpha
        assert (cfg["loss"], cfg["margin_s"], cfg["margin_m2"], cfg["adadistill_weighted"]) == ("arcface", 64.0, 0.45, True)
    if distill == "ekd":
        # TFace's ekd.py: 0.02 positive / 0.01 negative, tau 0.01, the FPR anchors 1e-1..1e-6
        assert (cfg["ekd_pos_weight"], cfg["ekd_neg_weight"], cfg["ekd_temperature"]) == (0.02, 0.01, 0.01)
        assert cfg["ekd_fpr_anchors"] == [10, 100, 1000, 10000, 100000, 1000000]


def test_dry_run_rejects_a_bad_override(tmp_path):
    r = _dry_run("mfnr_stn", tmp_path, EXTRA="distil_stages=1,2")
    assert r.returncode == 2 and "distill_stages" in r.stderr  # the nearest valid key is named
    r = _dry_run("mfnr_stn", tmp_path, EXTRA="lr=fast")
    assert r.returncode == 2 and "lr" in r.stderr
    r = subprocess.run(["bash", os.path.join(RECIPES, "mfn_self.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "--bogus" in r.stderr
    r = subprocess.run(["bash", os.path.join(RECIPES, "lowres.sh"), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and "kt, kd or ktkd" in r.stderr  # a mode recipe without its mode


def test_default_teacher_is_the_newest_checkpoint(tmp_path):
    t = tmp_path / "o" / "teacher_r90"
    t.mkdir(parents=True)
    for n in (3, 12, 9):
        (t / f"model-{n:04d}.params").write_bytes(b"")
    r = _dry_run("mfn_stn", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"--teacher {t}/model\\,12" in r.stdout


def test_small_scale_extra_resolves_for_every_row():
    """The Makefile's no-DATA mode appends ``shrinkteanet demo --recipe-extra NET``: it must
    parse as overrides of every row's config, and its net_opts must round-trip exactly."""
    scale = demo.get_scale("tiny")
    nets = {"teacher_r90": "r90", "teacher_r100": "r100", "mfn_margin": "mfn"}
    for row, (name, network, _) in EXPECTED.items():
        net = nets.get(row, "lowres" if row.startswith("lowres") else network)
        extra = demo.recipe_extra(scale, net)
        assert not any(" " in x for x in extra)  # the recipes split EXTRA on white space
        pre = ["network=r90"] if row.startswith("lowres") else []
        cfg = config.config_by_name(name, pre + extra)
        want = scale["teacher_opts"] if net in ("r90", "r100", "lowres") else scale["student_opts"][net]
        assert {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.net_opts.items()} == want
        assert cfg.image_size == scale["image_size"] and cfg.batch_size == scale["batch_size"]
        if net not in ("r90", "r100"):
            assert dict(cfg.teacher_net_opts) == scale["teacher_opts"]
        if net == "lowres":
            assert cfg.lowres_size == scale["image_size"] // 2


def _make(*args):
    return subprocess.run(["make", "-s", "-n", "-o", "install", "-o", ".venv/.installed-cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_make_help_lists_a_train_target_per_row():
    r = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    names = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
    assert len(names) == len(set(names))  # one line per target
    for t in ("demo", "reproduce-small", "train-teacher", "train-mfnr", "eval-lfw", "eval-megaface", "eval-ijbc"):
        assert t in names
    with open(os.path.join(ROOT, "Makefile")) as f:
        mk = f.read()
    used = set(re.findall(r"^\t\$\(call RECIPE,(\w+),", mk, re.M))
    assert used == set(SCRIPTS)  # every recipe has its make target
    for script, modes in MODES.items():  # ... and every mode of it
        assert set(re.findall(rf"^\t\$\(call RECIPE,{script},\w+,(\w+)\)", mk, re.M)) == set(modes)


def test_make_train_target_runs_the_recipe_with_data():
    r = _make("train-mfn-l2", "DATA=/d/emore", "GPUS=0,1", "TEACHER=/t/m,3", "OUT=/w")
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if "recipes/mfn_l2.sh" in ln]
    assert line and "DATA=/d/emore" in line[0] and "OUT=/w/recipes " in line[0] and "TEACHER=/t/m,3" in line[0]
    assert "--recipe-extra" not in line[0] and "DATA is not set" not in r.stdout


def test_make_train_target_without_data_says_so_and_uses_the_small_set():
    r = _make("train-mfnr", "OUT=/w", "DEMO_SCALE=tiny")
    assert r.returncode == 0, r.stderr
    assert "DATA is not set: mfnr_stn runs on the synthetic set /w/demo/synth" in r.stdout
    line = [ln for ln in r.stdout.splitlines() if "recipes/mfnr_stn.sh" in ln][0]
    assert "DATA=/w/demo/synth" in line and "OUT=/w/recipes-small" in line
    assert "--recipe-extra mfnr --scale tiny" in line and "MEGAFACE=/w/demo/synth/megaface" in line


def test_make_fair_study_targets_run_one_resumable_part_each():
    for part in ("calibration", "tuning", "main", "efficiency"):
        r = _make(f"reproduce-{part}", "STUDENTS=mfn", "JOBS=2", "OUT=/w")
        assert r.returncode == 0, r.stderr
        line = r.stdout.strip().splitlines()[-1]
        assert line.endswith(f"reproduce --part {part} --out /w/reproduce-fair --scale fair --resume --jobs 2 "
                             "--students mfn"), line
    r = _make("reproduce-main")
    assert r.stdout.strip().splitlines()[-1].endswith("--scale fair --resume")
