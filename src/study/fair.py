"""The fair study (issue 26): students trained as long as their teacher, every method at its
published default and at one strength tuned on the validation split, MFN-R and MFN.

``shrinkteanet reproduce --scale fair --part calibration|tuning|main|efficiency`` runs one part
or several (in that order), each a plan of real ``shrinkteanet`` commands on ``study.Scheduler``:

* ``calibration``: the teacher at ``calibration_teacher_steps`` and the self-studied students at
  ``calibration_steps`` (seed 0, the same schedule shape): the budget curves;
* ``tuning``: each method of the scale's ``tuning`` grid at every grid value, ``tuning_seed``
  only, at ``budget_steps``, evaluated on ``val.bin`` only (``data synth --val-pairs``);
  ``select`` then picks one value per method from those validation numbers alone (the
  published default's run is ``main``'s default run of that seed: one training serves both);
* ``main``: the scale's methods at their defaults, plus each tuned method at its chosen value
  where that differs from the default, every seed, at ``budget_steps``, the paper's protocols;
* ``efficiency``: the same students at ``efficiency_steps`` (a quarter of the budget).

Budgets are in steps and are scale fields, because the converged budget is what the
calibration measures.  With ``resume`` a train stage killed midway continues from its last
checkpoint (``train --resume``, ``scheduler.ResumeOrOverwrite``); finished stages are skipped as
everywhere in the study.  ``study.fair_report`` writes each part's ``study.json`` and the
merged REPORT.md from whatever has finished.

Layout of ``out``: ``synth/``, ``teacher/`` (the teacher at ``teacher_steps``), ``teacher_cache/``
(its embeddings, which every run whose method reads them takes from it: ``demo.cache_use``), ``calibration/``,
``tuning/`` (+ ``selection.json``), ``main/``, ``efficiency/``, each run folder as in the demo.
"""
import copy
import json
import os

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.utils import write_json
from shrinkteanet.study import demo
from shrinkteanet.study.scheduler import CheckpointOf, ResumeOrOverwrite, Stage

PARTS = ("calibration", "tuning", "main", "efficiency")
SELF = "self"
SELECTION = "selection.json"
#: per part: the wall time and core-seconds of every invocation that ran stages, summed
TIMES = "times.json"
#: the validation metric of the tuning choice: 10-fold accuracy on val.bin (never a test set)
VAL_METRIC = "val accuracy (10-fold, val.bin)"
TEACHER_DIR = "teacher"


def learns_from_teacher(run):
    """Whether the run (a planned run or a study.json record) is a distilled student: not the teacher,
    not a self-studied student.  Only such runs need the teacher and carry its ``teacher_sha1``."""
    return run["method"] not in ("teacher", SELF)


def parse_parts(text):
    """``--part`` (comma-separated) -> the parts in run order; unknown names are an InputError."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if not parts or bad:
        raise InputError(f"--part {text!r}: choose from {', '.join(PARTS)} (comma-separated)")
    return [p for p in PARTS if p in parts]


def steps_per_epoch(scale):
    """Steps of one epoch: the training images over the batch (the loader drops the last one)."""
    s = scale["synth"]
    return int(s["identities"]) * int(s["images_per_id"]) // int(scale["batch_size"])


def epochs_for(scale, steps, key):
    """A budget in steps as whole epochs (the schedule is in epochs: decays at 60% and 85%)."""
    per = steps_per_epoch(scale)
    if steps <= 0 or steps % per:
        raise InputError(f"scale {scale.get('name')}: {key}={steps} is not a positive multiple of the "
                         f"{per} steps of an epoch")
    return steps // per


def check_scale(scale):
    """The fair fields a part reads, present and whole epochs; a scale without them is refused."""
    need = ("budget_steps", "teacher_steps", "efficiency_steps", "calibration_steps", "calibration_teacher_steps",
            "tuning", "tuning_seed")
    missing = [k for k in need if k not in scale]
    if missing:
        raise InputError(f"scale {scale.get('name')}: no {missing[0]} (the fair study needs --scale fair)")
    for key in ("budget_steps", "teacher_steps", "efficiency_steps"):
        epochs_for(scale, scale[key], key)
    for key in ("calibration_steps", "calibration_teacher_steps"):
        for steps in scale[key]:
            epochs_for(scale, steps, key)
    sizes = {len(grid) for _, grid, _ in scale["tuning"].values()}
    if len(sizes) > 1:
        raise InputError(f"scale {scale.get('name')}: tuning grids differ in size ({sorted(sizes)}); "
                         "every method gets a grid of the same size")
    check_tuning_defaults(scale)


def check_tuning_defaults(scale):
    """Each grid's declared default is the value the method's config trains with: the default run
    is shared by the tuning and main parts (``tuning_runs``), so a mismatch would mislabel it."""
    from shrinkteanet.training.config import config_by_name

    for net in scale["students"]:
        for method, (key, _, default) in scale["tuning"].items():
            args = train_args(scale, strength_runs("main", scale, (net,), (0,), (method,), scale["budget_steps"])[0])
            got = config_by_name(args[1], args[2:])[key]
            if float(got) != float(default):
                raise InputError(f"scale {scale.get('name')}: tuning default of {method} is {key}={default}, "
                                 f"but config {args[1]} trains with {key}={got}")


def _run(part, network, method, seed, steps, name, **kw):
    rec = dict(part=part, network=network, method=method, seed=int(seed), steps=int(steps),
               dir=os.path.join(part, name) if part != TEACHER_DIR else TEACHER_DIR, strength=None, overrides=[])
    rec.update(kw)
    return rec


def teacher_run(scale):
    return _run(TEACHER_DIR, "r90", "teacher", 0, scale["teacher_steps"], TEACHER_DIR)


def calibration_runs(scale, students):
    """The teacher and the self-studied students at doubling budgets, seed 0."""
    runs = [_run("calibration", "r90", "teacher", 0, s, f"teacher_{s}") for s in scale["calibration_teacher_steps"]]
    return runs + [_run("calibration", net, SELF, 0, s, f"{net}_self_{s}")
                   for net in students for s in scale["calibration_steps"]]


def _value_text(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def strength_name(network, method, seed, tuned=False):
    """The folder name of a main or efficiency run (``<net>_<method>[_tuned]_s<seed>``)."""
    return f"{network}_{method}{'_tuned' if tuned else ''}_s{seed}"


def tuning_runs(scale, students):
    """Every grid value of every tuned method, one seed, at the budget.  The published default at
    the tuning seed is the main part's default-strength run of that seed (the same command: the
    config's own value, no override), so it trains once and serves both parts; ``check_scale``
    holds each grid's default to the config's value."""
    runs = []
    seed = scale["tuning_seed"]
    for net in students:
        for method, (key, grid, default) in scale["tuning"].items():
            for v in grid:
                kw = dict(strength="grid", key=key, value=v, default=default, overrides=[f"{key}={v}"])
                if v == default:
                    kw.update(dir=os.path.join("main", strength_name(net, method, seed)), overrides=[])
                runs.append(_run("tuning", net, method, seed, scale["budget_steps"],
                                 f"{net}_{method}_{key}{_value_text(v)}", **kw))
    return runs


def strength_runs(part, scale, students, seeds, methods, steps, selection=None):
    """The methods at their published default (and at their tuned value where it differs), every seed."""
    runs = []
    for net in students:
        for method in methods:
            grid = scale["tuning"].get(method)
            chosen = ((selection or {}).get(net) or {}).get(method)
            for seed in seeds:
                kw = dict(strength="default", key=grid[0], value=grid[2]) if grid else {}
                if grid and chosen and chosen["grid"].get(_value_text(grid[2])) is not None:
                    kw["validation"] = dict(metric=VAL_METRIC, value=chosen["grid"][_value_text(grid[2])])
                runs.append(_run(part, net, method, seed, steps, strength_name(net, method, seed), **kw))
                if chosen and chosen.get("chosen") is not None and chosen["chosen"] != chosen["default"]:
                    v = chosen["chosen"]
                    runs.append(_run(part, net, method, seed, steps, strength_name(net, method, seed, tuned=True),
                                     strength="tuned", key=chosen["key"], value=v, overrides=[f"{chosen['key']}={v}"],
                                     validation=dict(metric=VAL_METRIC, value=chosen["grid"][_value_text(v)])))
    return runs


def part_runs(part, scale, students, seeds=None, methods=None, selection=None):
    """The runs of one part (dicts: part, network, method, seed, steps, dir, strength, overrides, ...)."""
    seeds = tuple(int(s) for s in (seeds if seeds is not None else scale["seeds"]))
    methods = tuple(methods or scale["methods"])
    if part == "calibration":
        return calibration_runs(scale, students)
    if part == "tuning":
        return tuning_runs(scale, students)
    if part == "main":  # the teacher's row beside the students of the main table
        return [teacher_run(scale)] + strength_runs(part, scale, students, seeds, methods, scale["budget_steps"],
                                                    selection)
    return strength_runs(part, scale, students, seeds, methods, scale["efficiency_steps"])


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------
def data_stage(out, scale):
    """``data synth`` with the validation set (``val_pairs`` of the scale's synth fields)."""
    data = os.path.join(out, "synth")
    names = ("train.rec", "lfw.bin", "cfp_fp.bin", "agedb_30.bin", "val.bin", "IJBC", "megaface", demo.SYNTH_SUMMARY)
    return Stage("synthetic data", [demo.synth_command(scale, data, 0)], [os.path.join(data, f) for f in names],
                 folder=data, stamp=os.path.join(out, ".synth.cmd"))


def train_args(scale, run):
    """``train`` arguments of one run at its budget: the demo's overrides with the budget's epochs."""
    sc = copy.deepcopy(scale)
    epochs = epochs_for(scale, run["steps"], f"{run['part']} budget")
    if run["method"] == "teacher":
        sc["teacher_epochs"] = epochs
        return ["--config", "teacher_r90", *demo.teacher_overrides(sc), "seed=0"]
    sc["student_epochs"] = epochs
    suffix, extra = demo.study_methods()[run["method"]]
    return ["--config", f"{run['network']}_{suffix}", *demo.student_overrides(sc, run["network"], run["seed"]),
            *extra, *run["overrides"]]


def train_stage(out, scale, run, data_st, resume):
    """The train stage of a run; with ``resume`` a run killed midway goes on through ``train --resume``."""
    rdir = os.path.join(out, run["dir"])
    args = train_args(scale, run)
    after = [data_st.name]
    if learns_from_teacher(run):  # the teacher cache where it serves the method, the teacher where needed
        source, waits = demo.teacher_source(out, os.path.join(out, TEACHER_DIR), args[1], args[2:])
        args += source
        after += waits
    flag = ResumeOrOverwrite(os.path.join(rdir, "model")) if resume else "--overwrite"
    name = "teacher" if run["dir"] == TEACHER_DIR else run["dir"]
    return Stage(f"{name}: train", [["train", *args, "--data", data_st.folder, "--out", rdir, flag,
                                     "--json", os.path.join(rdir, "train.json")]],
                 [os.path.join(rdir, "train.json")], folder=rdir, after=tuple(after))


def val_commands(run_dir, data_dir, scale):
    """The tuning runs' only evaluation: verification on ``val.bin``."""
    ev = os.path.join(run_dir, "eval")
    return [["eval", "verification", "--data-dir", data_dir, "--targets", "val",
             "--model", CheckpointOf(os.path.join(run_dir, "train.json")), "--image-size", str(scale["image_size"]),
             "--batch-size", str(scale["eval_batch"]), "--out", os.path.join(ev, "val"),
             "--json", os.path.join(ev, "val.json")]]


def eval_files(run):
    return ("val.json",) if run["part"] == "tuning" else demo.EVAL_FILES


def eval_stage(out, scale, run, train_st, data_dir):
    rdir = os.path.join(out, run["dir"])
    cmds = val_commands(rdir, data_dir, scale) if run["part"] == "tuning" else demo.eval_commands(rdir, data_dir, scale)
    # a tuning run's val.bin stage has its own name (and stamp): its folder may be a main run's
    suffix = ": val" if run["part"] == "tuning" else ": eval"
    return Stage(train_st.name.replace(": train", suffix), cmds,
                 [os.path.join(rdir, "eval", f) for f in eval_files(run)], folder=os.path.join(rdir, "eval"),
                 after=(train_st.name,))


def plan_part(out, scale, part, runs, resume=False):
    """The stages of one part: data, the teacher where a run needs it, the teacher cache
    (``demo.cache_stage``, ``teacher_cache/``) where a run's method reads it (``demo.cache_use``),
    then each run (self-studied first: they need no teacher) with its
    evaluation."""
    data_st = data_stage(out, scale)
    stages = [data_st]
    need_teacher = part != "calibration" and any(r["method"] != SELF for r in runs)
    if need_teacher or part == "main":
        t = teacher_run(scale)
        tst = train_stage(out, scale, t, data_st, resume)
        stages += [tst, eval_stage(out, scale, t, tst, data_st.folder)]
    users = []
    for run in sorted((r for r in runs if r["dir"] != TEACHER_DIR), key=learns_from_teacher):
        st = train_stage(out, scale, run, data_st, resume)
        users += [st, eval_stage(out, scale, run, st, data_st.folder)]
    if any(demo.CACHE_STAGE in st.after for st in users):  # once per teacher and data, before its users
        stages.append(demo.cache_stage(out, data_st, os.path.join(out, TEACHER_DIR)))
    return stages + users


# ---------------------------------------------------------------------------------------------
# Tuning: the choice reads the validation set only
# ---------------------------------------------------------------------------------------------
def val_accuracy(run_dir):
    """The run's accuracy on ``val.bin`` (``eval/val.json``), or None before it is evaluated.
    The tuning choice reads nothing else: never a test set's report."""
    path = os.path.join(run_dir, "eval", "val.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(json.load(f)["val"]["accuracy"])


def choose(grid, default, scores):
    """The value of ``grid`` with the highest validation score; a tie goes to the published
    ``default``, then to the earlier grid value.  None while a grid value has no score."""
    if any(scores.get(v) is None for v in grid):
        return None
    best = max(scores[v] for v in grid)
    tied = [v for v in grid if scores[v] == best]
    return default if default in tied else tied[0]


def select(out, scale, students):
    """``{network: {method: {key, default, chosen, metric, seed, grid: {value text: val accuracy}}}}``
    from the tuning runs' validation reports alone (``eval/val.json`` of each ``tuning_runs`` folder)."""
    scores = {}
    for r in tuning_runs(scale, students):
        scores.setdefault((r["network"], r["method"]), {})[r["value"]] = val_accuracy(os.path.join(out, r["dir"]))
    sel = {}
    for net in students:
        for method, (key, grid, default) in scale["tuning"].items():
            got = scores[(net, method)]
            sel.setdefault(net, {})[method] = dict(
                key=key, default=default, chosen=choose(grid, default, got), metric=VAL_METRIC,
                seed=scale["tuning_seed"], grid={_value_text(v): got[v] for v in grid})
    return sel


def read_selection(out):
    path = os.path.join(out, "tuning", SELECTION)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_selection(out, selection):
    write_json(os.path.join(out, "tuning", SELECTION), selection)


def refresh_selection(out, scale):
    """Rewrite ``tuning/selection.json`` from the validation reports of every network of the
    scale (a ``--students mfn`` tuning run keeps MFN-R's choice), where a tuning part exists; a
    method with no report in this folder keeps the entry the file had (a selection copied in)."""
    if not os.path.isdir(os.path.join(out, "tuning")):
        return
    write_selection(out, keep_copied(select(out, scale, tuple(scale["students"])), read_selection(out))[0])


def keep_copied(fresh, old):
    """``fresh`` (``select``) where each method without a val.bin report in this folder keeps
    ``old``'s entry (a ``selection.json`` copied in from the folder that ran the grid); returns it
    and the ``net/method`` names whose copied entry holds grid values."""
    copied = []
    for net, methods in fresh.items():
        for method, entry in methods.items():
            kept = (old or {}).get(net, {}).get(method)
            if kept and all(a is None for a in entry["grid"].values()):
                methods[method] = kept
                if any(a is not None for a in kept["grid"].values()):
                    copied.append(f"{net}/{method}")
    return fresh, copied


# ---------------------------------------------------------------------------------------------
# Running parts and the merged report
# ---------------------------------------------------------------------------------------------
def add_times(out, part, sched, elapsed):
    """Add this invocation's wall time and core-seconds (stage seconds x threads) to the part's."""
    path = os.path.join(out, part, TIMES)
    t = {"wall_s": 0.0, "core_s": 0.0, "invocations": 0}
    if os.path.isfile(path):
        with open(path) as f:
            t = json.load(f)
    ran = [st for st in sched.times if not st.skipped]
    if not ran:
        return t
    t["wall_s"] += elapsed
    t["core_s"] += sum(st.seconds for st in ran) * sched.threads
    t["invocations"] += 1
    t.update(jobs=sched.jobs, threads=sched.threads)
    write_json(path, t)
    return t


def run_part(out, scale, part, *, students, seeds, methods, resume, scheduler):
    """Plan and run one part; after ``tuning`` write the selection (from val.bin reports only)."""
    import time

    runs = part_runs(part, scale, students, seeds, methods, read_selection(out) if part == "main" else None)
    stages = plan_part(out, scale, part, runs, resume)
    t0 = time.time()
    scheduler.run(stages)
    if scheduler.dry_run:
        return runs
    os.makedirs(os.path.join(out, part), exist_ok=True)
    add_times(out, part, scheduler, time.time() - t0)
    if part == "tuning":
        refresh_selection(out, scale)
    return runs


def collect_parts(out, scale, seeds=None, methods=None, merged=None):
    """``{part: study}`` for every part that has a folder in ``out`` or ``merged`` records
    (``fair_report.read_merged``), over the scale's students, so a report after ``--students mfn``
    still lists the MFN-R runs as done or missing."""
    from shrinkteanet.study import fair_report

    parts = {}
    students = tuple(scale["students"])
    for part in PARTS:
        if not os.path.isdir(os.path.join(out, part)) and part not in (merged or {}):
            continue
        runs = part_runs(part, scale, students, seeds, methods, read_selection(out) if part == "main" else None)
        parts[part] = fair_report.build_part(out, scale, part, runs, merged)
    return parts


def run_fair(out, scale, parts, *, students=None, seeds=None, methods=None, resume=False, jobs=None, threads=0,
             force=False, dry_run=False, python=None, merge=(), report_only=False):
    """``shrinkteanet reproduce --part ...``: run ``parts`` in order (none with ``report_only``),
    then write every part's ``study.json`` and the merged REPORT.md, runs of the ``merge``
    study.json files filling in what ``out`` has not finished; returns the report path (None for
    a dry run)."""
    from shrinkteanet.study import fair_report, report_table
    from shrinkteanet.study.scheduler import Scheduler

    check_scale(scale)
    students = tuple(students or scale["students"])
    demo.check_methods(tuple(methods or scale["methods"]))
    merged = fair_report.read_merged(merge, scale)  # before any training: a bad file fails at once
    sched_kw = dict(jobs=jobs or os.cpu_count() or 1, threads=threads, python=python, force=force, dry_run=dry_run)
    for part in () if report_only else parts:
        run_part(out, scale, part, students=students, seeds=seeds, methods=methods, resume=resume,
                 scheduler=Scheduler(**sched_kw))
    if dry_run:
        return None
    if report_only:  # the choice follows the val.bin reports there are now, as after a tuning run
        refresh_selection(out, scale)
    return fair_report.write_report(out, collect_parts(out, scale, seeds, methods, merged), report_table.method_names())
