"""The fair study's machinery (issue 26): the parts' plans at their budgets, the tuning choice
from the validation set alone, the aggregation of several seeds against scipy's paired t
interval, "steps to match" on a hand-made curve, and a train stage resumed after a kill."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from shrinkteanet.core.errors import InputError
from shrinkteanet.study import demo, fair, fair_report
from shrinkteanet.study.scheduler import ResumeOrOverwrite, Scheduler, resolve_arg


def _arg(args, key):
    return next(a.split("=", 1)[1] for a in args if isinstance(a, str) and a.startswith(key + "="))


# ----------------------------------------------------------------------------- plans


def test_fair_scale_plans_every_part_at_its_budget(tmp_path):
    scale = demo.get_scale("fair")
    fair.check_scale(scale)
    per = fair.steps_per_epoch(scale)
    assert per == 2000 * 16 // 64
    main = fair.part_runs("main", scale, ("mfnr", "mfn"))
    students = [r for r in main if r["method"] != "teacher"]
    assert len(students) == 2 * len(scale["methods"]) * len(scale["seeds"])  # no selection yet: defaults only
    assert {r["strength"] for r in students if r["method"] in scale["tuning"]} == {"default"}
    for r in main:
        args = fair.train_args(scale, r)
        steps = scale["teacher_steps"] if r["method"] == "teacher" else scale["budget_steps"]
        assert int(_arg(args, "num_epochs")) * per == steps
        assert _arg(args, "lr_steps") == demo._lr_steps(steps // per)  # the same schedule shape at every budget
    eff = fair.part_runs("efficiency", scale, ("mfnr",))
    assert {r["steps"] for r in eff} == {scale["efficiency_steps"]} == {scale["budget_steps"] // 4}
    cal = fair.part_runs("calibration", scale, ("mfnr", "mfn"))
    assert sorted(r["steps"] for r in cal if r["network"] == "mfn") == sorted(scale["calibration_steps"])
    tun = fair.part_runs("tuning", scale, ("mfnr",))
    assert {r["seed"] for r in tun} == {scale["tuning_seed"]} and len(tun) == 5 * 4  # same-size grid per method
    stages = fair.plan_part(str(tmp_path), scale, "tuning", tun)
    evals = [s for s in stages if s.name.endswith(": val")]
    assert len(evals) == len(tun) and all(" --targets val " in s.text() and "megaface" not in s.text() for s in evals)


def test_the_tuning_default_is_the_main_parts_default_run(tmp_path):
    """The published default at the tuning seed trains once: the tuning plan's train stage is the
    main plan's (same name, folder, command), and its val.bin stage has a stamp of its own."""
    scale = demo.get_scale("fair")
    out = str(tmp_path)
    tun = fair.part_runs("tuning", scale, ("mfn",))
    shared = [r for r in tun if r["value"] == r["default"]]
    assert sorted(r["dir"] for r in shared) == sorted(f"main/mfn_{m}_s{scale['tuning_seed']}" for m in scale["tuning"])
    assert all(r["dir"].startswith("tuning/") and r["overrides"] for r in tun if r not in shared)
    main = fair.plan_part(out, scale, "main", fair.part_runs("main", scale, ("mfn",), seeds=(0,)))
    tuning = fair.plan_part(out, scale, "tuning", tun)
    by_name = {s.name: s for s in main}
    for r in shared:
        t = next(s for s in tuning if s.name == f"{r['dir']}: train")
        assert t.text() == by_name[t.name].text() and t.stamp == by_name[t.name].stamp
        val = next(s for s in tuning if s.name == f"{r['dir']}: val")
        assert val.stamp != by_name[f"{r['dir']}: eval"].stamp and val.outputs == [os.path.join(out, r["dir"], "eval",
                                                                                                "val.json")]
    # a declared default the config does not train with would mislabel the shared run
    bad = dict(scale, tuning=dict(scale["tuning"], kd=("kd_lambda", (0.1, 0.3, 1, 3), 3)))
    with pytest.raises(InputError, match="tuning default of kd is kd_lambda=3, but config mfnr_kd"):
        fair.check_scale(bad)


def test_tuned_runs_are_planned_only_where_the_choice_differs_from_the_default():
    scale = demo.get_scale("fair")
    sel = {"mfnr": {"stn": dict(key="stn_weight", default=1, chosen=10, grid={"1": 0.8, "3": 0.81, "10": 0.85,
                                                                                   "30": 0.84}),
                    "kd": dict(key="kd_lambda", default=1, chosen=1, grid={})}}
    runs = fair.part_runs("main", scale, ("mfnr",), seeds=(0, 1, 2), selection=sel)
    tuned = [r for r in runs if r["strength"] == "tuned"]
    assert sorted(r["seed"] for r in tuned) == [0, 1, 2] and {r["method"] for r in tuned} == {"stn"}
    assert all(_arg(fair.train_args(scale, r), "stn_weight") == "10" for r in tuned)
    assert tuned[0]["validation"] == {"metric": fair.VAL_METRIC, "value": 0.85}


def test_bad_parts_and_budgets_are_input_errors():
    assert fair.parse_parts("main,calibration") == ["calibration", "main"]
    with pytest.raises(InputError, match="--part"):
        fair.parse_parts("main,best")
    scale = demo.get_scale("fair")
    with pytest.raises(InputError, match="budget_steps=1234"):
        fair.check_scale(dict(scale, budget_steps=1234))
    with pytest.raises(InputError, match="same size"):
        fair.check_scale(dict(scale, tuning=dict(scale["tuning"], kd=("kd_lambda", (1, 2), 1))))
    with pytest.raises(InputError, match="budget_steps"):
        fair.check_scale(demo.get_scale("study"))


def test_resume_flag_and_stamp(tmp_path):
    flag = ResumeOrOverwrite(str(tmp_path / "model"))
    assert resolve_arg(flag) == "--overwrite"
    (tmp_path / "model-state.json").write_text("{}")
    assert resolve_arg(flag) == "--resume"
    scale = demo.get_scale("fair_tiny")
    run = fair.part_runs("calibration", scale, ("mfnr",))[-1]
    data = fair.data_stage(str(tmp_path), scale)
    a = fair.train_stage(str(tmp_path), scale, run, data, resume=True)
    b = fair.train_stage(str(tmp_path), scale, run, data, resume=False)
    assert a.text() == b.text()  # a resumed stage is the same stage: finished ones are skipped either way


# ----------------------------------------------------------------------------- tuning reads val.bin only


def _tuning_tree(out, scale, val, test):
    for r in fair.tuning_runs(scale, scale["students"]):
        ev = os.path.join(out, r["dir"], "eval")
        os.makedirs(ev, exist_ok=True)
        with open(os.path.join(ev, "val.json"), "w") as f:
            json.dump({"val": {"accuracy": val[(r["method"], r["value"])]}}, f)
        with open(os.path.join(ev, "verification.json"), "w") as f:
            json.dump({t: {"accuracy": test[(r["method"], r["value"])]} for t in ("lfw", "cfp_fp", "agedb_30")}, f)


def test_selection_reads_only_the_validation_set(tmp_path):
    scale = demo.get_scale("fair")
    scale["students"] = ("mfnr",)
    out = str(tmp_path)
    scale["tuning"] = {m: scale["tuning"][m] for m in ("stn", "kd", "margin")}
    val = {("stn", 1): 0.80, ("stn", 3): 0.83, ("stn", 10): 0.86, ("stn", 30): 0.85,
           ("kd", 0.1): 0.90, ("kd", 0.3): 0.90, ("kd", 1): 0.90, ("kd", 3): 0.88,
           ("margin", 0.2): 0.91, ("margin", 0.3): 0.93, ("margin", 0.4): 0.92, ("margin", 0.5): 0.91}
    test = {k: 1.0 - v for k, v in val.items()}  # the test sets would choose the opposite everywhere
    _tuning_tree(out, scale, val, test)
    first = fair.select(out, scale, ("mfnr",))["mfnr"]
    assert {m: s["chosen"] for m, s in first.items()} == {"stn": 10, "kd": 1, "margin": 0.3}  # kd: tie -> default
    assert first["stn"]["grid"] == {"1": 0.80, "3": 0.83, "10": 0.86, "30": 0.85}
    assert first["stn"]["metric"] == fair.VAL_METRIC and first["stn"]["seed"] == scale["tuning_seed"]
    # the test reports corrupted, then removed: the same choice
    for root, _, files in os.walk(out):
        for f in files:
            if f == "verification.json":
                with open(os.path.join(root, f), "w") as fh:
                    fh.write("not json")
    assert fair.select(out, scale, ("mfnr",))["mfnr"] == first
    for root, _, files in os.walk(out):
        if "verification.json" in files:
            os.remove(os.path.join(root, "verification.json"))
    assert fair.select(out, scale, ("mfnr",))["mfnr"] == first
    # the validation numbers changed: the choice follows them
    _tuning_tree(out, scale, {**val, ("stn", 3): 0.90, ("kd", 3): 0.95}, test)
    again = fair.select(out, scale, ("mfnr",))["mfnr"]
    assert again["stn"]["chosen"] == 3 and again["kd"]["chosen"] == 3 and again["margin"]["chosen"] == 0.3
    # a grid value not evaluated yet: no choice
    os.remove(os.path.join(out, "tuning", "mfnr_stn_stn_weight30", "eval", "val.json"))
    assert fair.select(out, scale, ("mfnr",))["mfnr"]["stn"]["chosen"] is None


def test_the_selection_keeps_every_networks_choice_and_report_only_refreshes_it(tmp_path):
    from shrinkteanet.cli import main

    scale = demo.get_scale("fair")
    out = str(tmp_path)
    val = {(m, v): 0.80 + (0.05 if v == grid[1] else 0) for m, (_, grid, _) in scale["tuning"].items() for v in grid}
    _tuning_tree(out, scale, val, {k: 0.5 for k in val})
    fair.refresh_selection(out, scale)  # as after `--part tuning --students mfn`: MFN-R's choice stays
    sel = fair.read_selection(out)
    assert set(sel) == {"mfnr", "mfn"}
    assert {m: c["chosen"] for m, c in sel["mfnr"].items()} == {m: g[1] for m, (_, g, _) in scale["tuning"].items()}
    ev = os.path.join(out, "tuning", "mfn_stn_stn_weight30", "eval", "val.json")
    with open(ev, "w") as f:
        json.dump({"val": {"accuracy": 0.99}}, f)
    assert main(["reproduce", "--scale", "fair", "--part", "tuning", "--out", out, "--report-only"]) == 0
    sel = fair.read_selection(out)
    assert sel["mfn"]["stn"]["chosen"] == 30 and sel["mfnr"]["stn"]["chosen"] == 3
    assert "| mfn | ShrinkTeaNet | `stn_weight` | 1: 80.00, 3: 85.00, 10: 80.00, 30: 99.00 | 1 | 30 |" in open(
        os.path.join(out, "REPORT.md")).read()
    # a selection copied into a folder without the grid's reports is kept, not blanked
    other = str(tmp_path / "other")
    os.makedirs(os.path.join(other, "tuning"))
    fair.write_selection(other, sel)
    fair.refresh_selection(other, scale)
    assert fair.read_selection(other) == sel
    tuning = fair.collect_parts(other, scale)["tuning"]  # the report shows the copied grid and says so
    assert tuning["selection"] == sel and tuning["runs"] == []
    assert tuning["selection_copied"] == [f"{n}/{m}" for n in ("mfn", "mfnr") for m in scale["tuning"]]
    text = fair_report.render({"tuning": tuning}, {})
    assert "| mfn | stn | `stn_weight` | 1: 80.00, 3: 85.00, 10: 80.00, 30: 99.00 | 1 | 30 |" in text
    assert "copied into this folder" in text and "mfnr/stn" in text
    assert [r["overrides"] for r in fair.part_runs("main", scale, ("mfn",), (0,), ("stn",), fair.read_selection(other))
            if r["strength"] == "tuned"] == [["stn_weight=30"]]


# ----------------------------------------------------------------------------- several seeds, by hand


def _record(method, seed, acc, strength=None):
    rec = {"network": "mfnr", "method": method, "seed": seed, "strength": strength, "steps": 100}
    rec.update({p: {"accuracy": acc[i]} for i, p in enumerate(("lfw", "cfp_fp", "agedb_30"))})
    rec["megaface"] = {"rank1": acc[3]}
    rec["ijbc"] = {"tar@1e-4": acc[4]}
    return rec


SELF = {0: (0.90, 0.80, 0.70, 0.30, 0.10), 1: (0.91, 0.78, 0.72, 0.35, 0.12), 2: (0.89, 0.81, 0.69, 0.28, 0.20)}
STN = {0: (0.92, 0.82, 0.75, 0.40, 0.20), 1: (0.925, 0.79, 0.74, 0.41, 0.15), 2: (0.915, 0.80, 0.76, 0.38, 0.30)}


def test_paired_intervals_over_three_seeds_against_scipy_from_study_json_to_report(tmp_path):
    records = [_record("self", s, SELF[s]) for s in SELF] + [_record("stn", s, STN[s], "default") for s in STN]
    paired, _ = fair_report.paired_table(records)
    # LFW by hand: d = (0.02, 0.015, 0.025), mean 0.02, sd 0.005, half = t_{0.975,2} * 0.005 / sqrt(3)
    lfw = next(r for r in paired if r["protocol"] == "lfw")
    half = 4.302652729911275 * 0.005 / math.sqrt(3)
    assert lfw["n"] == 3 and lfw["mean_diff"] == pytest.approx(0.02)
    assert lfw["ci95"] == pytest.approx([0.02 - half, 0.02 + half]) and lfw["verdict"] == "better"
    for i, prot in enumerate(("lfw", "cfp_fp", "agedb_30", "megaface", "ijbc")):
        row = next(r for r in paired if r["protocol"] == prot)
        ci = sps.ttest_rel([STN[s][i] for s in (0, 1, 2)], [SELF[s][i] for s in (0, 1, 2)]).confidence_interval(0.95)
        assert row["ci95"] == pytest.approx([ci.low, ci.high]), prot
        expect = "better" if ci.low > 0 else "worse" if ci.high < 0 else "within noise"
        assert row["verdict"] == expect, prot
    assert {r["protocol"]: r["verdict"] for r in paired}["cfp_fp"] == "within noise"
    # study.json -> REPORT.md: the rendered cells are those numbers
    study = {"part": "main", "runs": records, "missing": [], "paired": paired, "contrasts": []}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    text = fair_report.render({"main": json.loads(path.read_text())}, {"self": "Self-studied", "stn": "ShrinkTeaNet"})
    row = next(ln for ln in text.splitlines() if ln.startswith("| mfnr | ShrinkTeaNet | Self-studied |"))
    assert f"+2.00 [{100 * (0.02 - half):+.2f}, {100 * (0.02 + half):+.2f}] better (n=3)" in row
    means = next(ln for ln in text.splitlines() if ln.startswith("| mfnr | ShrinkTeaNet | 3 |"))
    assert f"{100 * np.mean([0.92, 0.925, 0.915]):.2f} ± {100 * np.std([0.92, 0.925, 0.915], ddof=1):.2f}" in means
    assert "| calibration | 0 | not run" in text and "| main | 6 | none |" in text  # missing parts are named


def test_main_heading_gives_the_students_budget_not_the_teachers():
    teacher = {**_record("teacher", 0, SELF[0]), "network": "r90", "steps": 400}
    records = [teacher] + [_record("self", s, SELF[s]) for s in SELF]
    text = fair_report.render({"main": {"part": "main", "runs": records, "missing": [], "paired": [],
                                        "contrasts": []}}, {"self": "Self-studied", "teacher": "Teacher"})
    heading = next(ln for ln in text.splitlines() if ln.startswith("## Main table"))
    assert heading.endswith("(100 steps)") and "| r90 | Teacher | 1 |" in text
    assert "cosine per stage" not in text  # no run with a teacher embedding: no cosine table


def test_report_gives_the_stage_cosines_averaged_over_seeds():
    records = [{**_record("stn", s, STN[s], "default"), "stage_cosines": {"1": c1, "4": c4}}
               for s, (c1, c4) in enumerate(((0.20, 0.50), (0.30, 0.70), (0.40, 0.60)))]
    text = fair_report.render({"main": {"part": "main", "runs": records, "missing": [], "paired": [],
                                        "contrasts": []}}, {"stn": "ShrinkTeaNet"})
    assert "| mfnr | ShrinkTeaNet | 0.300 | - | - | 0.600 |" in text


def test_tuning_report_gives_the_stage_cosines_per_grid_value():
    sel = {"mfnr": {"stn": dict(key="stn_weight", default=1, chosen=3, grid={"1": 0.90, "3": 0.915})}}
    runs = [{**_record("stn", 0, STN[0], "grid"), "key": "stn_weight", "value": v, "stage_cosines": {"4": c}}
            for v, c in ((1, 0.45), (3, 0.625))]
    text = fair_report.render({"tuning": {"part": "tuning", "runs": runs, "missing": [], "selection": sel}},
                              {"stn": "ShrinkTeaNet"})
    assert "| mfnr | ShrinkTeaNet | `stn_weight` | 1: 90.00, 3: 91.50 | 1 | 3 |" in text
    assert "| mfnr | ShrinkTeaNet `stn_weight`=3 | - | - | - | 0.625 |" in text
    assert "| mfnr | ShrinkTeaNet `stn_weight`=1 | - | - | - | 0.450 |" in text


def test_contrasts_pair_all_stages_with_final_only_and_tuned_with_default():
    final = {s: tuple(v - 0.01 for v in STN[s]) for s in STN}
    tuned = {s: tuple(v + 0.02 for v in STN[s]) for s in STN}
    records = ([_record("self", s, SELF[s]) for s in SELF] + [_record("stn", s, STN[s], "default") for s in STN]
               + [_record("stn_final", s, final[s]) for s in STN] + [_record("stn", s, tuned[s], "tuned") for s in STN])
    _, contrasts = fair_report.paired_table(records)
    pairs = {(r["method"], r["strength"], tuple(r["vs"])) for r in contrasts}
    assert pairs == {("stn", "tuned", ("stn", "default")), ("stn", "default", ("stn_final", None))}
    d = next(r for r in contrasts if r["vs"] == ["stn_final", None] and r["protocol"] == "agedb_30")
    assert d["mean_diff"] == pytest.approx(0.01) and d["sd"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- budget curves


def test_steps_to_match_on_a_hand_made_curve():
    curve = [(1000, 0.80), (2000, 0.84), (4000, 0.90), (8000, 0.89)]
    how, steps = fair_report.steps_to_match(curve, 0.87)  # halfway from 0.84 to 0.90 in log2: sqrt(2000 * 4000)
    assert how == "interpolated" and steps == pytest.approx(math.sqrt(2000 * 4000))
    how, steps = fair_report.steps_to_match(curve, 0.81)  # a quarter of the way from 1000 to 2000
    assert steps == pytest.approx(1000 * 2 ** 0.25)
    assert fair_report.steps_to_match(curve, 0.84) == ("interpolated", pytest.approx(2000.0))
    assert fair_report.steps_to_match(curve, 0.79) == ("at most", 1000.0)
    assert fair_report.steps_to_match(curve, 0.95) == ("not reached", None)
    assert fair_report.steps_to_match(curve, None) == ("not reached", None)


def test_converged_budget_is_the_first_flat_doubling():
    def pt(steps, a, b, c):
        return (steps, {"lfw": a, "cfp_fp": b, "agedb_30": c})

    curve = [pt(1500, 0.83, 0.78, 0.66), pt(3000, 0.89, 0.80, 0.70), pt(6000, 0.92, 0.82, 0.76),
             pt(12000, 0.924, 0.823, 0.764), pt(24000, 0.925, 0.824, 0.765)]
    res = fair_report.converged_budget(curve)
    assert res["budget"] == 6000 and res["residual"] == pytest.approx(0.004)
    res = fair_report.converged_budget(curve[:3])
    assert res["budget"] is None and res["residual"] == pytest.approx(0.06)


# ----------------------------------------------------------------------------- a stage killed midway


def test_a_train_stage_killed_midway_resumes_from_its_checkpoint(tmp_path):
    scale = demo.get_scale("fair_tiny")
    out = str(tmp_path)
    run = next(r for r in fair.part_runs("calibration", scale, ("mfnr",)) if r["steps"] == 6)
    stages = fair.plan_part(out, scale, "calibration", [run], resume=True)[:2]  # data, the train stage
    Scheduler(jobs=2, threads=1).run(stages)
    rdir = os.path.join(out, run["dir"])
    full = json.load(open(os.path.join(rdir, "train.json")))
    assert full["steps"] == 6
    # the same stage killed after its first epoch: a checkpoint and its state, no train.json, no stamp
    shutil.rmtree(rdir)
    cmd = [resolve_arg(a) for a in stages[1].commands[0]]
    cmd = cmd[:cmd.index("--json")]
    cmd.insert(3, "max_batches=3")
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", *cmd], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.load(open(os.path.join(rdir, "model-state.json")))["step"] == 3
    assert not os.path.exists(os.path.join(rdir, "train.json"))
    times = Scheduler(jobs=2, threads=1).run(stages)
    assert [t.skipped for t in times] == [True, False]  # data skipped, the train stage ran again
    log = open(os.path.join(rdir, f"{stages[1].name.replace('/', '_').replace(': ', '_')}.log")).read()
    assert "resumed from" in log and "step 3" in log
    resumed = json.load(open(os.path.join(rdir, "train.json")))
    assert resumed["steps"] == 6 and resumed["params_sha1"] == full["params_sha1"]  # bit for bit
    assert [t.skipped for t in Scheduler(jobs=2, threads=1).run(stages)] == [True, True]


def test_cli_parts_dry_run_writes_nothing_and_bad_input_exits_2(tmp_path, capsys):
    from shrinkteanet.cli import main

    out = tmp_path / "fair"
    assert main(["reproduce", "--scale", "fair", "--part", "main,tuning", "--out", str(out), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and not out.exists()
    assert main(["reproduce", "--part", "best", "--out", str(out)]) == 2
    assert "--part 'best'" in capsys.readouterr().err
    assert main(["reproduce", "--resume", "--out", str(out)]) == 2
    assert main(["reproduce", "--scale", "study", "--part", "main", "--out", str(out)]) == 2
    assert "needs --scale fair" in capsys.readouterr().err


def _fake_run(out, run, acc, cos=0.5, sha1=None):
    rdir = os.path.join(out, run["dir"])
    os.makedirs(os.path.join(rdir, "eval"), exist_ok=True)
    sched = {"lr_steps_batches": [run["steps"] * 6 // 10], "global_batch": 24}
    with open(os.path.join(rdir, "train.json"), "w") as f:
        json.dump({"steps": run["steps"], "schedule": sched, "losses": {"softmax": 1.0},
                   "stage_cosines": {"4": cos}, "params_sha1": sha1}, f)
    with open(os.path.join(rdir, "eval", "verification.json"), "w") as f:
        json.dump({t: {"accuracy": acc} for t in ("lfw", "cfp_fp", "agedb_30")}, f)
    with open(os.path.join(rdir, "eval", "megaface.json"), "w") as f:
        json.dump({"rank1": {"10": acc}}, f)
    with open(os.path.join(rdir, "eval", "ijbc.json"), "w") as f:
        json.dump({"tar_at_far": {"0.0001": acc}}, f)


def test_study_json_records_budget_schedule_strength_validation_and_cosines_per_run(tmp_path):
    scale = demo.get_scale("fair_tiny")
    out = str(tmp_path)
    sel = {"mfnr": {"stn": dict(key="stn_weight", default=1, chosen=10, grid={"1": 0.6, "10": 0.7})}}
    runs = fair.part_runs("main", scale, ("mfnr",), selection=sel)
    for k, r in enumerate(runs):
        _fake_run(out, r, 0.5 + 0.01 * k, cos=0.1 * k)
    os.remove(os.path.join(out, runs[-1]["dir"], "eval", "ijbc.json"))  # one run not evaluated yet
    study = fair_report.build_part(out, scale, "main", runs)
    assert study["missing"] == [runs[-1]["dir"]] and len(study["runs"]) == len(runs) - 1
    by_dir = {r["dir"]: r for r in study["runs"]}
    tuned = by_dir["main/mfnr_stn_tuned_s0"]
    assert tuned["strength"] == "tuned" and (tuned["key"], tuned["value"]) == ("stn_weight", 10)
    assert tuned["validation"] == {"metric": fair.VAL_METRIC, "value": 0.7}
    assert tuned["overrides"] == ["stn_weight=10"]
    default = by_dir["main/mfnr_stn_s0"]
    assert default["strength"] == "default" and default["value"] == 1 and default["validation"]["value"] == 0.6
    k = [r["dir"] for r in runs].index("main/mfnr_stn_s0")
    assert default["stage_cosines"] == {"4": pytest.approx(0.1 * k)}
    assert default["steps"] == scale["budget_steps"] and default["schedule"]["lr_steps_batches"] == [3]
    assert by_dir["teacher"]["steps"] == scale["teacher_steps"]
    assert {(r["method"], r["strength"]) for r in study["paired"]} == {("stn", "default"), ("stn", "tuned")}


def test_match_table_reads_the_self_studied_calibration_curve():
    def rec(method, steps, acc, seed=0, strength=None):
        return dict(_record(method, seed, (acc,) * 5, strength), steps=steps)

    calibration = {"runs": [rec("self", 100, 0.70), rec("self", 200, 0.80), rec("self", 400, 0.90),
                            rec("teacher", 400, 0.99)]}
    efficiency = {"runs": [rec("stn", 100, 0.84, 0, "default"), rec("stn", 100, 0.86, 1, "default"),
                           rec("self", 100, 0.70)]}
    rows = fair_report.match_table(calibration, efficiency)
    stn = next(r for r in rows if r["method"] == "stn" and r["protocol"] == "lfw")
    assert stn["mean"] == pytest.approx(0.85) and stn["match"] == "interpolated"
    assert stn["steps"] == pytest.approx(2 ** (math.log2(200) + 0.5))  # halfway from 0.80 to 0.90
    own = next(r for r in rows if r["method"] == "self" and r["protocol"] == "lfw")
    assert (own["match"], own["steps"]) == ("at most", 100.0)
    none = fair_report.match_table({"runs": []}, efficiency)
    assert {r["match"] for r in none} == {"no calibration curve"}


# ----------------------------------------------------------------------------- the teacher cache

#: the configs (``<network>_<suffix>``) whose loss reads nothing of the teacher but its final
#: embedding (Eq. 6 at i = n only; AdaDistill; EKD): design.md's ``teacher_embedding_only`` list
CACHE_ONLY = {"stn_final", "l2_final", "adadistill", "ekd"}


def _teacher_flags(stage):
    cmd = stage.commands[0]
    return {a: cmd[cmd.index(a) + 1] for a in ("--teacher", "--teacher-cache") if a in cmd}


def _check_cache_plan(stages, cache_dir):
    names = [s.name for s in stages]
    cache = stages[names.index("teacher: cache")]
    assert cache.after == ("teacher: train",) and names.index("teacher: train") < names.index("teacher: cache")
    cmd = cache.commands[0]
    assert cmd[0] == "cache-teacher" and cmd[cmd.index("--out") + 1] == cache_dir
    assert resolve_arg(cmd[cmd.index("--model") + 1]).endswith(os.path.join("teacher", "train.json>"))
    users = []
    for i, st in enumerate(stages):
        if not st.name.endswith(": train") or st.name == "teacher: train":
            continue
        cmd = st.commands[0]
        method = cmd[cmd.index("--config") + 1].split("_", 1)[1]  # <network>_<method's config suffix>
        flags = _teacher_flags(st)
        if method == "self":
            assert flags == {} and st.after == ("synthetic data",), st.name
            continue
        assert i > names.index("teacher: cache") and "teacher: cache" in st.after, st.name
        assert flags.pop("--teacher-cache") == cache_dir
        if method in CACHE_ONLY:
            assert flags == {} and "teacher: train" not in st.after, st.name
        else:  # the frozen tails or fc7 from the checkpoint, the embedding from the cache
            assert set(flags) == {"--teacher"} and "teacher: train" in st.after, st.name
        users.append(method)
    return users


def test_cache_only_methods_train_from_the_cache_built_once_after_the_teacher(tmp_path):
    scale = demo.get_scale("fair_tiny")
    out = str(tmp_path)
    methods = ("self", "stn", "stn_final", "l2", "l2_final", "kd", "margin", "adadistill", "ekd")
    runs = fair.part_runs("main", scale, ("mfnr",), seeds=(0, 1), methods=methods)
    stages = fair.plan_part(out, scale, "main", runs)
    users = _check_cache_plan(stages, os.path.join(out, demo.TEACHER_CACHE))
    assert sorted(users) == sorted(m for m in methods if m != "self" for _ in (0, 1))
    assert [s.name for s in stages].count("teacher: cache") == 1  # once per teacher and data
    # the tuning grid's overrides keep a final-stage run cache-only
    tuning = dict(scale, tuning=dict(stn_final=("stn_weight", (1, 10), 1), kd=("kd_lambda", (1, 3), 1)))
    tun = fair.plan_part(out, tuning, "tuning", fair.part_runs("tuning", tuning, ("mfnr",)))
    assert sorted(_check_cache_plan(tun, os.path.join(out, demo.TEACHER_CACHE))) == ["kd"] * 2 + ["stn_final"] * 2
    # no run reads the teacher: no cache stage (the calibration part)
    cal = fair.plan_part(out, scale, "calibration", fair.part_runs("calibration", scale, ("mfnr",)))
    assert "teacher: cache" not in [s.name for s in cal]
    # the small study's plan the same way
    small, _ = demo.plan(out, demo.get_scale("tiny"), seeds=(0,), students=("mfnr",),
                         methods=("self", "stn", "stn_final", "kd"))
    assert sorted(_check_cache_plan(small, os.path.join(out, demo.TEACHER_CACHE))) == ["kd", "stn", "stn_final"]


def test_the_live_teacher_alone_where_the_cache_cannot_serve():
    over = demo.student_overrides(demo.get_scale("fair_tiny"), "mfnr")
    assert demo.cache_use("mfnr_hint", over) is None  # the teacher's stage features every step
    assert demo.cache_use("mfnr_stn_final", over + ["color_jitter=0.2"]) is None  # cached images are un-jittered
    assert demo.cache_use("mfnr_stn_final", over + ["lowres_size=16"]) is None  # ... and at full resolution
    assert demo.cache_use("mfnr_stn_final", over) == "only" and demo.cache_use("mfnr_kd", over) == "both"
    args, waits = demo.teacher_source("out", "out/teacher", "mfnr_hint", over)
    assert args[0] == "--teacher" and len(args) == 2 and waits == ["teacher: train"]


# ----------------------------------------------------------------------------- merging work folders


def _fake_part(out, scale, seeds, acc_of, teacher="t" * 40):
    """Fake finished main-part runs of ``seeds`` (self and stn, MFN-R) in ``out``, with the teacher
    of params sha1 ``teacher`` (None: no teacher in this folder); ``acc_of(method, seed)``."""
    runs = fair.part_runs("main", scale, ("mfnr",), seeds, ("self", "stn"))
    for r in runs:
        if r["method"] == "teacher" and teacher is None:
            continue
        _fake_run(out, r, 0.99 if r["method"] == "teacher" else acc_of(r["method"], r["seed"]),
                  sha1=teacher if r["method"] == "teacher" else "s" * 40)
    return runs


def test_merge_fills_the_runs_this_folder_has_not_finished_and_pairs_them(tmp_path):
    scale = demo.get_scale("fair_tiny")
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    acc = {("self", 0): 0.60, ("stn", 0): 0.64, ("self", 1): 0.70, ("stn", 1): 0.71}
    _fake_part(here, scale, (0,), lambda m, s: acc[m, s], teacher=None)  # its distilled run learnt from there's
    _fake_part(there, scale, (0, 1), lambda m, s: acc[m, s] - 0.5 if s == 0 else acc[m, s])  # seed 0 differs
    fair_report.write_report(there, fair.collect_parts(there, scale, (0, 1), ("self", "stn")), {})
    other = os.path.join(there, "main", "study.json")
    merged = fair_report.read_merged([other], scale)
    study = fair.collect_parts(here, scale, (0, 1), ("self", "stn"), merged)["main"]
    by = {r["dir"]: r for r in study["runs"]}
    assert by["main/mfnr_stn_s0"]["lfw"]["accuracy"] == pytest.approx(0.64)  # this folder's own run wins
    assert "merged_from" not in by["main/mfnr_stn_s0"]
    assert by["main/mfnr_stn_s1"]["merged_from"] == other and by["main/mfnr_self_s1"]["lfw"]["accuracy"] == 0.70
    assert study["missing"] == [] and by["teacher"]["merged_from"] == other and study["teacher_sha1"] == "t" * 40
    assert by["main/mfnr_stn_s1"]["teacher_sha1"] == "t" * 40 and by["main/mfnr_self_s1"]["teacher_sha1"] is None
    # seed-paired over both folders: d = (0.04, 0.01), mean 0.025, sd 0.03 / sqrt(2), t_{0.975,1} = 12.706
    lfw = next(r for r in study["paired"] if r["protocol"] == "lfw")
    half = 12.706204736174696 * (0.03 / math.sqrt(2)) / math.sqrt(2)
    assert lfw["seeds"] == [0, 1] and lfw["mean_diff"] == pytest.approx(0.025)
    assert lfw["ci95"] == pytest.approx([0.025 - half, 0.025 + half]) and lfw["verdict"] == "within noise"
    fair_report.write_report(here, {"main": study}, {})
    text = open(os.path.join(here, "REPORT.md")).read()
    assert f"- main: 3 runs merged from `{other}`" in text
    # a study.json made from merged records passes their first source on
    again = fair_report.read_merged([os.path.join(here, "main", "study.json")], scale)
    assert again["main"]["main/mfnr_stn_s1"]["merged_from"] == other
    assert again["main"]["main/mfnr_stn_s0"]["merged_from"] == os.path.join(here, "main", "study.json")


def test_merge_refuses_other_scales_plans_and_broken_files(tmp_path):
    scale = demo.get_scale("fair_tiny")
    there = str(tmp_path / "there")
    _fake_part(there, scale, (0,), lambda m, s: 0.6)
    fair_report.write_report(there, fair.collect_parts(there, scale, (0,), ("self", "stn")), {})
    other = os.path.join(there, "main", "study.json")
    longer = dict(scale, budget_steps=2 * scale["budget_steps"])  # another budget: not comparable
    with pytest.raises(InputError, match="scale_fingerprint .* is not this scale's"):
        fair_report.read_merged([other], longer)
    # what only picks runs (seeds, methods) leaves the fingerprint alone
    assert fair_report.scale_fingerprint(dict(scale, seeds=(5,), methods=("self",))) == \
        fair_report.scale_fingerprint(scale)
    study = json.load(open(other))
    rec = next(r for r in study["runs"] if r["dir"] == "main/mfnr_stn_s0")
    rec["overrides"] = ["stn_weight=10"]  # the same folder name, another strength
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(study))
    with pytest.raises(InputError, match=r"run main/mfnr_stn_s0 has overrides=\['stn_weight=10'\]"):
        fair.collect_parts(str(tmp_path / "empty"), scale, (0,), ("self", "stn"), fair_report.read_merged([bad], scale))
    bad.write_text(json.dumps(dict(study, part="tuning")))
    with pytest.raises(InputError, match="a tuning part does not merge"):
        fair_report.read_merged([bad], scale)
    del study["scale_fingerprint"]
    bad.write_text(json.dumps(study))
    with pytest.raises(InputError, match="no 'scale_fingerprint'"):
        fair_report.read_merged([bad], scale)
    bad.write_text("{")
    with pytest.raises(InputError, match="not a readable study.json"):
        fair_report.read_merged([bad], scale)


def test_cli_report_only_merges_without_training_and_merge_needs_a_part(tmp_path, capsys):
    from shrinkteanet.cli import main

    scale = demo.get_scale("fair_tiny")
    there = str(tmp_path / "there")
    _fake_part(there, scale, (0, 1), lambda m, s: 0.6 + 0.01 * s + (0.02 if m == "stn" else 0))
    fair_report.write_report(there, fair.collect_parts(there, scale, (0, 1), ("self", "stn")), {})
    os.remove(os.path.join(there, "teacher", "train.json"))
    out = tmp_path / "here"
    args = ["reproduce", "--scale", "fair_tiny", "--part", "main", "--out", str(out), "--seeds", "0,1",
            "--methods", "self,stn"]
    assert main(args + ["--merge", os.path.join(there, "main", "study.json"), "--report-only"]) == 0
    study = json.load(open(out / "main" / "study.json"))
    assert len(study["runs"]) == 5 and study["missing"] == [] and not (out / "synth").exists()
    assert "ShrinkTeaNet | Self-studied | +2.00 [+2.00, +2.00] better (n=2)" in (out / "REPORT.md").read_text()
    capsys.readouterr()
    assert main(["reproduce", "--merge", "x.json", "--out", str(out)]) == 2
    assert "--merge belongs to the fair study's parts" in capsys.readouterr().err
    assert main(args + ["--merge", str(tmp_path / "absent.json"), "--report-only"]) == 2
    assert "absent.json: not a readable study.json" in capsys.readouterr().err


def test_distilled_runs_of_another_teacher_are_not_merged_and_say_why(tmp_path):
    scale = demo.get_scale("fair_tiny")
    here, there, old = (str(tmp_path / n) for n in ("here", "there", "old"))
    _fake_part(here, scale, (0,), lambda m, s: 0.6, teacher="a" * 40)
    _fake_part(there, scale, (1,), lambda m, s: 0.7, teacher="b" * 40)  # a retrained teacher: other weights
    fair_report.write_report(there, fair.collect_parts(there, scale, (1,), ("self", "stn")), {})
    other = os.path.join(there, "main", "study.json")
    study = fair.collect_parts(here, scale, (0, 1), ("self", "stn"), fair_report.read_merged([other], scale))["main"]
    dirs = {r["dir"] for r in study["runs"]}
    assert "main/mfnr_self_s1" in dirs and "main/mfnr_stn_s1" not in dirs  # self-studied runs need no teacher
    assert study["missing"] == ["main/mfnr_stn_s1"]
    assert study["not_merged"] == [{"dir": "main/mfnr_stn_s1", "merged_from": other,
                                    "why": f"teacher {'b' * 40}, not this table's {'a' * 40}"}]
    assert "main/mfnr_stn_s1 of" in fair_report.render({"main": study}, {})
    # a file whose teacher record has no params sha1 (written before it was kept) merges no distilled run
    _fake_part(old, scale, (1,), lambda m, s: 0.7, teacher=None)
    _fake_run(old, fair.teacher_run(scale), 0.99)
    fair_report.write_report(old, fair.collect_parts(old, scale, (1,), ("self", "stn")), {})
    study = fair.collect_parts(here, scale, (0, 1), ("self", "stn"),
                               fair_report.read_merged([os.path.join(old, "main", "study.json")], scale))["main"]
    assert [s["why"] for s in study["not_merged"]] == [f"teacher unrecorded, not this table's {'a' * 40}"]
    # the file's table teacher: its top-level teacher_sha1, else (older files) its teacher record's
    study = json.load(open(other))
    for rec in study["runs"]:
        rec.pop("teacher_sha1", None)
    no_record = dict(study, runs=[r for r in study["runs"] if r["method"] != "teacher"])
    older = dict(study, teacher_sha1=None)
    assert fair_report.file_teacher(no_record) == "b" * 40 and fair_report.file_teacher(older) == "b" * 40
    for name, content in (("no_record.json", no_record), ("older.json", older)):
        (tmp_path / name).write_text(json.dumps(content))
        merged = fair_report.read_merged([str(tmp_path / name)], scale)
        assert merged["main"]["main/mfnr_stn_s1"]["teacher_sha1"] == "b" * 40
        assert merged["main"]["main/mfnr_self_s1"]["teacher_sha1"] is None
    assert fair_report.file_teacher(dict(no_record, teacher_sha1=None)) is None


def test_a_part_without_a_teacher_row_takes_the_teacher_merged_into_another_part(tmp_path):
    """A report-only folder merging another folder's main and efficiency files: the efficiency
    table has no teacher row, so its teacher is the one merged into main (one folder, one teacher)."""
    scale = demo.get_scale("fair_tiny")
    there, here = str(tmp_path / "there"), str(tmp_path / "here")
    _fake_part(there, scale, (0,), lambda m, s: 0.6)
    for r in fair.part_runs("efficiency", scale, ("mfnr",), (0,), ("self", "stn")):
        _fake_run(there, r, 0.5, sha1="s" * 40)
    fair_report.write_report(there, fair.collect_parts(there, scale, (0,), ("self", "stn")), {})
    files = [os.path.join(there, p, "study.json") for p in ("main", "efficiency")]
    assert json.load(open(files[1]))["teacher_sha1"] == "t" * 40
    parts = fair.collect_parts(here, scale, (0,), ("self", "stn"), fair_report.read_merged(files, scale))
    eff = parts["efficiency"]
    assert eff["teacher_sha1"] == "t" * 40 and eff["missing"] == [] and eff["not_merged"] == []
    assert {r["dir"] for r in eff["runs"]} == {"efficiency/mfnr_self_s0", "efficiency/mfnr_stn_s0"}
    alone = fair.collect_parts(here, scale, (0,), ("self", "stn"), fair_report.read_merged(files[1:], scale))
    assert alone["efficiency"]["teacher_sha1"] is None  # no teacher merged anywhere: the distilled run stays out
    assert [s["dir"] for s in alone["efficiency"]["not_merged"]] == ["efficiency/mfnr_stn_s0"]
