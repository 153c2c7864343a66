"""`shrinkteanet demo` end to end at the tiny scale (SHRINKTEANET_DEMO_SCALE=tiny): synthetic data,
a teacher, three students, all three evaluations and REPORT.md, every stage a real command."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from shrinkteanet.study import demo
from shrinkteanet.study import paper
from shrinkteanet.study import report_table
from shrinkteanet.core.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL_HEADS = [h for _, h in report_table.PROTOCOLS]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = dict(os.environ, SHRINKTEANET_DEMO_SCALE="tiny")
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "demo", "--out", str(out), "--json",
                        str(out.parent / "summary.json")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout + r.stderr


def _table(text):
    """{(network name, method name): [cells]} of the Table 2 section."""
    sec = text.split("## Table 2 layout", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in sec.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[(cells[0], cells[1])] = dict(zip(head, cells))
    return rows


def _ours(cell):
    return float(cell.split()[0])


def test_report_has_every_section_filled_from_real_runs(demo_run):
    out, log = demo_run
    text = (out / "REPORT.md").read_text()
    for sec in ("## Table 2 layout", "## Does the paper's ordering hold here?", "## Plots", "## Set-up", "## Stages"):
        assert sec in text
    rows = _table(text)
    assert set(rows) == {("LResNet-E-IR (r90 family)", "Teacher"), ("MobileFaceNet-R", "Self-studied"),
                         ("MobileFaceNet-R", "Student-1 (L2)"), ("MobileFaceNet-R", "ShrinkTeaNet")}
    for row in rows.values():
        for h in PROTOCOL_HEADS:
            assert re.match(r"^\d+\.\d\d", row[h]), (h, row[h])  # a number, never the '-' placeholder
    # every stage was a real command that ran (the first run skips nothing)
    meta = json.loads((out / "demo.json").read_text())
    names = [s["name"] for s in meta["stages"]]
    assert names[0] == "synthetic data" and not any(s["skipped"] for s in meta["stages"])
    # data, then teacher and 3 students, each a train stage and one stage of its 3 evaluations, and the
    # teacher cache that L2 and ShrinkTeaNet read the teacher's embeddings from
    assert sorted(names[1:]) == sorted([f"{r}: {k}" for r in ("teacher", "mfnr_self", "mfnr_l2", "mfnr_stn")
                                        for k in ("train", "eval")] + ["teacher: cache"])
    ev = next(ln for ln in log.splitlines() if "[mfnr_stn: eval] start: " in ln)  # progress shows each command
    assert all(f"shrinkteanet eval {p} " in ev for p in ("verification", "megaface", "ijb"))
    assert meta["jobs"] == os.cpu_count()  # one stage per core by default
    verdict = text.split("## Does the paper's ordering hold here?", 1)[1]
    assert "In this run the paper's ordering (ShrinkTeaNet > L2 > self-studied) **" in verdict


def test_table_numbers_are_the_evaluations_json(demo_run):
    out, _ = demo_run
    rows = _table((out / "REPORT.md").read_text())
    for method, name in (("self", "Self-studied"), ("l2", "Student-1 (L2)"), ("stn", "ShrinkTeaNet")):
        ev = out / f"mfnr_{method}" / "eval"
        ver = json.loads((ev / "verification.json").read_text())
        mf = json.loads((ev / "megaface.json").read_text())
        ij = json.loads((ev / "ijbc.json").read_text())
        row = rows[("MobileFaceNet-R", name)]
        for t, h in (("lfw", "LFW"), ("cfp_fp", "CFP-FP"), ("agedb_30", "AgeDB-30")):
            assert row[h].split()[0] == f"{100 * ver[t]['accuracy']:.2f}"
            ref = paper.RESULTS[("mfnr", method)][t]
            assert row[h].endswith(f"({100 * ref:.2f})")
        largest = max(int(k) for k, v in mf["rank1"].items() if v is not None)
        assert largest == 10  # the tiny set has 10 distractors
        assert row["MegaFace rank-1"].split()[0] == f"{100 * mf['rank1'][str(largest)]:.2f}"
        assert row["IJB-C TAR@FAR=1e-4"].split()[0] == f"{100 * ij['tar_at_far']['0.0001']:.2f}"
    assert rows[("MobileFaceNet-R", "ShrinkTeaNet")]["IJB-C TAR@FAR=1e-4"].endswith("(94.00)")


def test_params_column_counts_the_checkpoint(demo_run):
    import mxnet as mx

    out, _ = demo_run
    rows = _table((out / "REPORT.md").read_text())
    for d, key in (("teacher", ("LResNet-E-IR (r90 family)", "Teacher")), ("mfnr_stn", ("MobileFaceNet-R", "ShrinkTeaNet"))):
        s = json.loads((out / d / "train.json").read_text())
        saved = mx.nd.load("%s-%04d.params" % (s["prefix"], s["checkpoint"]))
        n = sum(v.size for k, v in saved.items() if k.startswith("arg:") and "fc7" not in k)
        ours, full, pap = rows[key]["Params (ours / full / paper)"].split(" / ")
        assert ours == f"{n / 1e6:.3f}M"
    assert pap == "3.73M"  # Table 2, MobileFaceNet-R


def test_plots_exist_and_are_png(demo_run):
    out, _ = demo_run
    text = (out / "REPORT.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "protocols.png" in links and "mfnr_stn/eval/verification/roc.png" in links
    assert "mfnr_stn/eval/megaface/cmc.png" in links and "teacher/eval/ijbc/roc.png" in links
    for rel in links:
        with open(out / rel, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", rel
    assert "(missing)" not in text


def test_headline_student_is_where_make_eval_looks(demo_run):
    out, _ = demo_run
    with open(os.path.join(ROOT, "Makefile")) as f:
        mk = f.read()
    default = re.search(r"^DEMO_MODEL \?= \$\(OUT\)/demo/(.+)$", mk, re.M).group(1)
    prefix, epoch = default.split(",")
    assert (out / ("%s-%04d.params" % (prefix, int(epoch)))).read_bytes() == (out / "mfnr_stn" / "model-0001.params").read_bytes()
    assert (out / f"{prefix}-symbol.json").is_file()
    assert (out / "student" / "image_size").read_text().strip() == "32"
    assert re.search(r"^EVAL_DATA = .*\$\(OUT\)/demo/synth\)$", mk, re.M)


def test_rerun_skips_finished_stages(demo_run):
    out, _ = demo_run
    before = (out / "REPORT.md").read_text().split("## Plots")[0]
    demo.run_demo(str(out), scale="tiny")
    meta = json.loads((out / "demo.json").read_text())
    assert meta["stages"] and all(s["skipped"] for s in meta["stages"])
    after = (out / "REPORT.md").read_text()
    assert after.split("## Plots")[0].split("## Table 2 layout")[1] == before.split("## Table 2 layout")[1]


def test_seeds_give_mean_and_sample_std(demo_run, tmp_path):
    """A two-seed tree made from the demo's real runs with known accuracies: the cell is the mean
    +- the sample std (ddof=1), and the ordering is judged on the means."""
    out, _ = demo_run
    work = tmp_path / "rep"
    shutil.copytree(out, work, ignore=shutil.ignore_patterns("synth"))
    acc = {("self", 0): 0.60, ("self", 1): 0.70, ("l2", 0): 0.72, ("l2", 1): 0.74, ("stn", 0): 0.80, ("stn", 1): 0.90}
    runs = []
    for (method, seed), a in acc.items():
        src, dst = work / f"mfnr_{method}", work / f"mfnr_{method}_s{seed}"
        shutil.copytree(src, dst)
        ver = json.loads((dst / "eval" / "verification.json").read_text())
        ver["lfw"]["accuracy"] = a
        (dst / "eval" / "verification.json").write_text(json.dumps(ver))
        s = json.loads((dst / "train.json").read_text())
        s["prefix"] = str(dst / "model")
        (dst / "train.json").write_text(json.dumps(s))
        runs.append(dict(network="mfnr", method=method, seed=seed, dir=dst.name))
    meta = json.loads((work / "demo.json").read_text())
    meta.update(seeds=[0, 1], runs=runs, title="two seeds")
    text = report_table.render(str(work), meta)
    rows = _table(text)
    for method, name in (("self", "Self-studied"), ("l2", "Student-1 (L2)"), ("stn", "ShrinkTeaNet")):
        v = np.array([acc[(method, 0)], acc[(method, 1)]])
        want = f"{100 * v.mean():.2f} ± {100 * np.std(v, ddof=1):.2f}"
        assert rows[("MobileFaceNet-R", name)]["LFW"].startswith(want)
    assert rows[("MobileFaceNet-R", "Self-studied")]["LFW"].startswith("65.00 ± 7.07")
    assert "## Every seed" in text and text.count("| MobileFaceNet-R | ShrinkTeaNet |") == 3
    order = report_table.ordering(report_table.collect(str(work), meta))
    assert order["mfnr"]["lfw"][0] is True and order["mfnr"]["lfw"][1] == pytest.approx([0.85, 0.73, 0.65])


def test_ordering_verdict_by_hand():
    def row(net, method, vals):
        return (net, method, {k: (v, None) for (k, _), v in zip(report_table.PROTOCOLS, vals)}, [], (0, 0))

    rows = [row("r90", "teacher", [0.9] * 5),
            row("mfn", "self", [0.5, 0.5, 0.5, 0.5, 0.5]), row("mfn", "l2", [0.6, 0.6, 0.6, 0.6, 0.5]),
            row("mfn", "stn", [0.7, 0.7, 0.5, 0.7, 0.6]),
            row("mfnr", "self", [0.1] * 5), row("mfnr", "l2", [0.2] * 5), row("mfnr", "stn", [0.3] * 5)]
    order = report_table.ordering(rows)
    assert list(order) == ["mfn", "mfnr"]
    assert [order["mfn"][k][0] for k, _ in report_table.PROTOCOLS] == [True, True, False, True, False]
    assert all(h for h, _ in order["mfnr"].values())
    text = report_table._ordering_text(order)
    assert "**holds on 8 of 10 (network, protocol) pairs**" in text
    assert "**does not hold** on 2 of 5 protocols" in text and "AgeDB-30: 50.00 / 60.00 / 50.00" in text
    assert "MobileFaceNet-R**: the paper's ordering ShrinkTeaNet > L2 > self-studied **holds** on every" in text


def test_bad_input():
    with pytest.raises(InputError, match="scale 'huge'"):
        demo.get_scale("huge")
    with pytest.raises(InputError, match="method 'bogus'"):
        demo.run_demo("/nonexistent/x", scale="tiny", methods=("bogus",))
    with pytest.raises(InputError, match="no small options for network 'r50'"):
        demo.student_overrides(demo.get_scale("tiny"), "r50")
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "demo", "--seeds", "1,x"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--seeds" in r.stderr


def test_dry_run_prints_commands_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "demo", "--scale", "tiny", "--dry-run", "--out",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "shrinkteanet data synth" in r.stderr and "--image-size 32" in r.stderr
    assert "shrinkteanet train --config teacher_r90" in r.stderr
    assert not (tmp_path / "d" / "synth").exists()


def test_study_json_has_the_contract_fields(demo_run):
    """study.json (CONTRACTS "Study results"): per run network, method, seed, steps, final loss
    parts and each protocol's metric with its count; the paired summary per method and protocol."""
    out, _ = demo_run
    s = json.loads((out / "study.json").read_text())
    assert {"teacher", "runs", "paired"} <= set(s)
    assert {r["method"] for r in s["runs"]} == {"self", "l2", "stn"}
    for r in s["runs"]:
        assert {"network", "method", "seed", "steps", "losses", "convergence", "stage_cosines"} <= set(r)
        summary = json.loads((out / r["dir"] / "train.json").read_text())
        assert r["steps"] == summary["steps"] > 0 and r["losses"] == summary["losses"]
        ver = json.loads((out / r["dir"] / "eval" / "verification.json").read_text())
        for t in ("lfw", "cfp_fp", "agedb_30"):
            assert r[t] == {"accuracy": ver[t]["accuracy"], "pairs": 40}  # the tiny sets have 40 pairs
        assert r["megaface"]["probes"] == 6 and r["megaface"]["trials"] == 6
        assert r["ijbc"]["pairs"] > r["ijbc"]["genuine_pairs"] > 0
    # distilled runs report the student-teacher cosine per stage: all four for the stage methods
    assert set(next(r for r in s["runs"] if r["method"] == "stn")["stage_cosines"]) == {"1", "2", "3", "4"}
    assert next(r for r in s["runs"] if r["method"] == "self")["stage_cosines"] == {}
    paired = {(p["method"], p["protocol"]): p for p in s["paired"]}
    assert set(paired) == {(m, p) for m in ("l2", "stn") for p in ("lfw", "cfp_fp", "agedb_30", "megaface", "ijbc")}
    by = {r["method"]: r for r in s["runs"]}
    p = paired[("stn", "lfw")]
    assert p["n"] == 1 and p["ci95"] is None and p["verdict"] == "one seed"
    assert p["mean_diff"] == pytest.approx(by["stn"]["lfw"]["accuracy"] - by["self"]["lfw"]["accuracy"])
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
