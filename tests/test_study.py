"""The stage scheduler of the demo and the study: --jobs 2 runs the same stages and leaves the
same files as --jobs 1, runs stages side by side, never has two writers for one folder,
skips finished stages on a rerun and stops on a failure."""
import json
import os
import stat
import sys
import textwrap

import pytest

from shrinkteanet.study import demo
from shrinkteanet.study import scheduler as study
from shrinkteanet.core.errors import InputError

FAKE = textwrap.dedent("""\
    #!{python}
    # stands in for `python -m shrinkteanet ARGS`: ARGS = write FOLDER FILE SECONDS JOURNAL [fail]
    import json, os, sys, time
    args = sys.argv[3:]
    _, folder, name, seconds, journal = args[:5]
    t0 = time.time()
    time.sleep(float(seconds))
    if args[5:] == ["fail"]:
        sys.exit(3)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        f.write(os.environ.get("OMP_NUM_THREADS", "") + "\\n")
    with open(journal, "a") as f:
        f.write(json.dumps([folder, t0, time.time()]) + "\\n")
    """)


@pytest.fixture()
def fake_python(tmp_path):
    path = tmp_path / "fakepy"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _plan(root, journal, seconds=0.4):
    """data -> three independent runs -> an evaluation of each (the demo's shape)."""
    def st(name, folder, file, after=()):
        return study.Stage(name, [["write", os.path.join(root, folder), file, seconds, journal]],
                           [os.path.join(root, folder, file)], folder=os.path.join(root, folder), after=after)

    stages = [st("data", "synth", "train.rec")]
    for r in ("a", "b", "c"):
        stages.append(st(f"{r}: train", r, "train.json", ("data",)))
        stages.append(st(f"{r}: eval", f"{r}/eval", "eval.json", (f"{r}: train",)))
    return stages


def _files(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


def _intervals(journal):
    with open(journal) as f:
        return [json.loads(line) for line in f]


def test_jobs_2_same_runs_and_files_as_jobs_1_and_one_writer_per_folder(tmp_path, fake_python):
    results = {}
    for jobs in (1, 2):
        root, journal = str(tmp_path / f"j{jobs}"), str(tmp_path / f"journal{jobs}")
        sched = study.Scheduler(jobs=jobs, python=fake_python, poll_s=0.02)
        times = sched.run(_plan(root, journal))
        results[jobs] = (sched, times, _files(root), _intervals(journal))
    s1, t1, f1, i1 = results[1]
    s2, t2, f2, i2 = results[2]
    assert {t.name for t in t1} == {t.name for t in t2} and len(t1) == 7
    # the same files (logs of the side-by-side mode aside), the stamps of every stage included
    assert {f for f in f2 if not f.endswith(".log")} == f1
    assert sum(f.endswith(".cmd") for f in f1) == 7
    assert s1.max_running == 1 and s2.max_running == 2
    # the three independent runs overlapped in time at jobs=2, never at jobs=1
    def overlaps(iv):
        return sum(1 for a in iv for b in iv if a is not b and a[1] < b[2] and b[1] < a[2])
    assert overlaps(i1) == 0 and overlaps(i2) > 0
    # one writer per folder: no two intervals of one folder overlap, and the scheduler saw none
    for iv in (i1, i2):
        for a in iv:
            for b in iv:
                if a is not b and a[0] == b[0]:
                    assert not (a[1] < b[2] and b[1] < a[2])
    assert all(len(users) == 1 for _, users in s2.writers_seen)
    # each child got its share of the cores as its thread count
    with open(tmp_path / "j2" / "a" / "train.json") as f:
        assert f.read().strip() == str(study.default_threads(2))
    # dependencies held: every eval started after its train finished
    end = {os.path.relpath(a[0], str(tmp_path / "j2")): a[2] for a in i2}
    start = {os.path.relpath(a[0], str(tmp_path / "j2")): a[1] for a in i2}
    for r in ("a", "b", "c"):
        assert start[f"{r}/eval"] >= end[r] and start[r] >= end["synth"]


def test_rerun_skips_finished_stages_and_reruns_a_changed_one(tmp_path, fake_python):
    root, journal = str(tmp_path / "w"), str(tmp_path / "journal")
    study.Scheduler(jobs=2, python=fake_python, poll_s=0.02).run(_plan(root, journal, 0.05))
    again = study.Scheduler(jobs=2, python=fake_python, poll_s=0.02).run(_plan(root, journal, 0.05))
    assert all(t.skipped for t in again) and len(_intervals(journal)) == 7
    changed = _plan(root, journal, 0.05)
    changed[3].commands[0][3] = 0.06  # b: train's command line changed -> it runs again, the rest is skipped
    times = study.Scheduler(jobs=2, python=fake_python, poll_s=0.02).run(changed)
    assert [t.name for t in times if not t.skipped] == ["b: train"]


def test_a_failing_stage_stops_the_run_naming_it(tmp_path, fake_python):
    root, journal = str(tmp_path / "w"), str(tmp_path / "journal")
    stages = _plan(root, journal, 0.05)
    stages[1].commands[0].append("fail")
    with pytest.raises(InputError, match=r"stage 'a: train' failed \(exit 3\)"):
        study.Scheduler(jobs=2, python=fake_python, poll_s=0.02).run(stages)
    assert not os.path.exists(os.path.join(root, "a", "eval"))


def test_plan_checks():
    a = study.Stage("a", [["x"]], [], folder="/w/a")
    with pytest.raises(InputError, match="both write /w/a with no order"):
        study.check_plan([a, study.Stage("b", [["y"]], [], folder="/w/a")])
    study.check_plan([a, study.Stage("b", [["y"]], [], folder="/w/a", after=("a",))])
    with pytest.raises(InputError, match="waits for 'z'"):
        study.check_plan([study.Stage("b", [["y"]], [], folder="/w/b", after=("z",))])
    with pytest.raises(InputError, match="twice"):
        study.check_plan([a, a])
    with pytest.raises(InputError, match="--jobs"):
        study.Scheduler(jobs=0)
    assert study.default_threads(2, cores=2) == 1 and study.default_threads(1, cores=2) == 2
    assert study.default_threads(4, cores=2) == 1


def test_demo_plan_pairs_every_method_on_the_same_seeds(tmp_path):
    scale = demo.get_scale("study")
    stages, runs = demo.plan(str(tmp_path), scale)
    study.check_plan(stages)
    trains = [s for s in stages if s.name.endswith(": train") and s.name != "teacher: train"]
    assert len(trains) == len(runs) == len(scale["methods"]) * len(scale["seeds"]) * len(scale["students"])
    assert len({s.folder for s in trains}) == len(trains)  # one folder per run
    # self-studied runs need no teacher: they may run beside it; every other waits for it or its cache
    for s in trains:
        waits = bool({"teacher: train", "teacher: cache"} & set(s.after))
        assert waits == (not s.name.split("_")[1].startswith("self")), s.name
    # paired: the same seed gives the same data order and schedule overrides to every method
    by_seed = {}
    for s, r in zip(trains, sorted(runs, key=lambda r: [t.folder for t in trains].index(
            os.path.join(str(tmp_path), r["dir"])))):
        args = [str(a) for a in s.commands[0]]
        common = [a for a in args if a.startswith(("seed=", "num_epochs=", "lr_steps=", "batch_size=", "lr="))]
        by_seed.setdefault(r["seed"], set()).add(tuple(common))
    assert all(len(v) == 1 for v in by_seed.values())
    # a teacher run's checkpoint is resolved only when the student starts
    stn = next(s for s in trains if "_stn_s0" in s.name)
    ckpt = stn.commands[0][stn.commands[0].index("--teacher") + 1]
    assert isinstance(ckpt, study.CheckpointOf) and ckpt.resolve().startswith("<final checkpoint")
    with pytest.raises(InputError, match="method 'bogus'"):
        demo.plan(str(tmp_path), scale, methods=("bogus",))


def _fake_run(root, name, steps, acc):
    ev = os.path.join(root, name, "eval")
    os.makedirs(ev)
    with open(os.path.join(root, name, "train.json"), "w") as f:
        json.dump({"steps": steps}, f)
    with open(os.path.join(ev, "verification.json"), "w") as f:
        json.dump({t: {"accuracy": acc} for t in ("lfw", "cfp_fp", "agedb_30")}, f)
    with open(os.path.join(ev, "megaface.json"), "w") as f:
        json.dump({"rank1": {"1000": acc / 2}}, f)
    with open(os.path.join(ev, "ijbc.json"), "w") as f:
        json.dump({"tar_at_far": {"0.0001": acc / 4}}, f)


def test_demo_adds_a_self_studied_run_at_4n_and_labels_its_effect_as_sample_efficiency(tmp_path):
    from shrinkteanet.study import demo_efficiency

    scale = demo.get_scale("small")
    stages, runs = demo.plan(str(tmp_path), scale)
    long_train = next(s for s in stages if s.name == "mfnr_self_x4: train")
    args = [str(a) for a in long_train.commands[0]]
    epochs = 4 * scale["student_epochs"]
    assert f"num_epochs={epochs}" in args and f"lr_steps={demo._lr_steps(epochs)}" in args
    assert sum(a.startswith("num_epochs=") for a in args) == 1 and "teacher: train" not in long_train.after
    assert "mfnr_self_x4" not in {r["dir"] for r in runs}  # not a row of the paired tables
    assert not demo_efficiency.long_self_runs(demo.get_scale("tiny"), ("mfnr",), (0,))
    # the section: distilled at N vs self-studied at N and at 4N, the numbers of the runs' reports
    for name, steps, acc in (("mfnr_self", 600, 0.80), ("mfnr_stn_w10", 600, 0.86), ("mfnr_self_x4", 2400, 0.88)):
        _fake_run(str(tmp_path), name, steps, acc)
    meta = dict(seeds=[0], runs=[dict(network="mfnr", method="self", seed=0, dir="mfnr_self"),
                                 dict(network="mfnr", method="stn_w10", seed=0, dir="mfnr_stn_w10")],
                long_self=demo_efficiency.long_self_runs(scale, ("mfnr",), (0,)))
    text = demo_efficiency.section(str(tmp_path), meta, {"self": "Self-studied", "stn_w10": "STN w10"})
    assert "## Sample efficiency: distilled at N steps vs self-studied at N and at 4N" in text
    assert "N = 600 steps" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "steps |" not in ln]
    assert rows == ["| Self-studied at N | 600 | 80.00 | 80.00 | 80.00 | 40.00 | 20.00 |",
                    "| STN w10 at N | 600 | 86.00 | 86.00 | 86.00 | 43.00 | 21.50 |",
                    "| Self-studied at 4N | 2400 | 88.00 | 88.00 | 88.00 | 44.00 | 22.00 |"]
    report = tmp_path / "REPORT.md"
    report.write_text("# t\n## Table 2 layout\nx\n## Paired differences to the self-studied student\ny\n")
    demo_efficiency.insert_section(str(report), text)
    body = report.read_text()
    assert body.index("## Table 2 layout") < body.index("## Sample efficiency") < body.index("## Paired differences")
