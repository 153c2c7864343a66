"""The fair study's results (issue 26): one ``study.json`` per part (``out/<part>/study.json``)
and the merged ``out/REPORT.md``, built from whatever runs have finished; what is missing is
listed, never guessed.

Per run, ``study.json`` records the budget (``steps`` trained, from ``train.json``), its
schedule (``schedule``: lr decay batches), ``strength`` (``default``, ``tuned`` or ``grid``) with
the tuned key and value, the validation metric the choice used (``validation``), the final
loss parts and the student-teacher cosine per stage at the end (``stage_cosines``).  ``paired``:
per network, method and strength, the paired difference to the self-studied run of the same
seed with its 95% t interval and verdict (``stats.paired_difference``); ``contrasts``: the
paper's own (all stages vs final only, ShrinkTeaNet vs Student-1) and tuned vs default.  The
efficiency part adds ``steps_to_match``: the self-studied budget at which the calibration curve
reaches each student's mean (``steps_to_match``).

Parts run in other work folders (another machine, an earlier session) join the report through
``read_merged``: a planned run this folder has not finished takes that folder's record, which
keeps ``merged_from``; runs merge only between study.json files of the same ``scale_fingerprint``.
"""
import hashlib
import json
import math
import os

from shrinkteanet.core.utils import atomic_write_bytes, write_json
from shrinkteanet.study import fair, stats
from shrinkteanet.study import study_report

PROTOCOLS = study_report.PROTOCOLS
#: the verification sets the calibration's convergence criterion reads, and its tolerance
CONVERGENCE_SETS = ("lfw", "cfp_fp", "agedb_30")
CONVERGENCE_TOL = 0.005
#: (treated, control) method pairs compared seed by seed besides "vs self-studied"
CONTRASTS = (("stn", "stn_final"), ("stn", "l2"))
#: scale keys that choose which runs a plan holds, not what a run trains or measures: outside the fingerprint
PLAN_KEYS = ("name", "students", "methods", "seeds", "headline", "frequent", "calibration_steps",
             "calibration_teacher_steps", "tuning", "tuning_seed", "teacher_epochs", "student_epochs")
#: the fields of a run a merged record must share with the planned run it stands for
RUN_KEYS = ("part", "network", "method", "seed", "strength", "key", "value", "overrides")


def _load(path):
    with open(path) as f:
        return json.load(f)


def data_counts(data_dir):
    """Pairs of every verification set (test sets and ``val``) from ``synth.json``."""
    counts = study_report.data_counts(data_dir)
    path = os.path.join(data_dir, "synth.json")
    if os.path.isfile(path) and "val" in _load(path):
        counts["val"] = _load(path)["val"].get("pairs")
    return counts


def scale_fingerprint(scale):
    """What a run of ``scale`` trains and measures on (data, networks, batch, budgets), as a
    16-hex digest; two work folders' runs are comparable only when theirs are equal."""
    fields = {k: v for k, v in scale.items() if k not in PLAN_KEYS}
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _merge_file(path, fingerprint):
    from shrinkteanet.core.errors import InputError

    try:
        study = _load(path)
    except (OSError, ValueError) as e:
        raise InputError(f"--merge {path}: not a readable study.json ({e})") from None
    for key in ("part", "runs", "scale_fingerprint"):
        if key not in study:
            raise InputError(f"--merge {path}: no {key!r} (a fair study part's study.json)")
    if study["part"] == "tuning":  # fair.select reads one folder's val.json files; a merged choice would not
        raise InputError(f"--merge {path}: a tuning part does not merge (its choice is made from one folder's "
                         "grid runs' eval/val.json); run the tuning part in one work folder")
    if study["scale_fingerprint"] != fingerprint:
        raise InputError(f"--merge {path}: scale_fingerprint {study['scale_fingerprint']} is not this scale's "
                         f"{fingerprint} (other data, networks or budgets: its runs are not comparable)")
    return study


def read_merged(paths, scale):
    """``{part: {run dir: record}}`` from other work folders' study.json files (``--merge``),
    each record marked with ``merged_from``; an earlier file wins a run both hold."""
    fingerprint = scale_fingerprint(scale)
    merged = {}
    for path in paths or ():
        study = _merge_file(path, fingerprint)
        teacher = file_teacher(study)
        for rec in study["runs"]:  # a record merged into that file keeps its first source and teacher
            merged.setdefault(study["part"], {}).setdefault(rec["dir"], dict(
                rec, merged_from=rec.get("merged_from") or str(path), teacher_sha1=teacher_of(rec, teacher)))
    return merged


def file_teacher(study):
    """The params sha1 of the teacher a study.json's table learnt from: its top-level ``teacher_sha1``
    (``build_part`` writes it), else, for files written before that field, its teacher record's."""
    if study.get("teacher_sha1"):
        return study["teacher_sha1"]
    return next((r.get("params_sha1") for r in study["runs"] if r["method"] == "teacher"), None)


def teacher_of(rec, teacher_sha1):
    """The params sha1 of the teacher a run learnt from: None for the teacher and the self-studied
    students (they learn from none), else the record's own or its folder's ``teacher_sha1``."""
    if not fair.learns_from_teacher(rec):
        return None
    return rec.get("teacher_sha1") or teacher_sha1


def merged_record(part, run, merged, teacher_sha1, skipped):
    """The merged record standing for planned ``run`` of ``part``, or None; one that disagrees with the plan
    (another strength, value or budget under the same folder name) is an InputError.  A distilled run
    learnt from another teacher than ``teacher_sha1`` (or from one its file does not name) is not
    merged: it goes to ``skipped`` with the reason, since runs of one table share one teacher."""
    from shrinkteanet.core.errors import InputError

    rec = (merged or {}).get(part, {}).get(run["dir"])
    if rec is None:
        return None
    if fair.learns_from_teacher(rec) and (rec.get("teacher_sha1") is None or rec["teacher_sha1"] != teacher_sha1):
        skipped.append({"dir": run["dir"], "merged_from": rec["merged_from"],
                        "why": f"teacher {rec.get('teacher_sha1') or 'unrecorded'}, not this table's "
                               f"{teacher_sha1 or 'unknown'}"})
        return None
    want = dict({k: run.get(k) for k in RUN_KEYS}, planned_steps=run["steps"])
    for key, value in want.items():
        if rec.get(key) != value:
            raise InputError(f"--merge {rec['merged_from']}: run {run['dir']} has {key}={rec.get(key)!r}, "
                             f"this plan {value!r}")
    return rec


def table_teacher(out, part, merged=None):
    """The params sha1 of the teacher every distilled run of ``out`` learns from: this folder's
    ``teacher/train.json``, else the teacher record merged into ``part``, else (a part without a
    teacher row: efficiency) the first teacher record merged into another part, since one work
    folder's parts share its ``teacher/``; else None."""
    path = os.path.join(out, fair.TEACHER_DIR, "train.json")
    if os.path.isfile(path):
        return _load(path).get("params_sha1")
    merged = merged or {}
    rec = merged.get(part, {}).get(fair.TEACHER_DIR)
    if rec is None:
        rec = next((runs[fair.TEACHER_DIR] for runs in merged.values() if fair.TEACHER_DIR in runs), None)
    return rec.get("params_sha1") if rec else None


def finished(out, run):
    rdir = os.path.join(out, run["dir"])
    return os.path.isfile(os.path.join(rdir, "train.json")) and all(
        os.path.isfile(os.path.join(rdir, "eval", f)) for f in fair.eval_files(run))


def run_record(out, run, counts):
    """One ``runs`` entry of a part's study.json (the run must have finished)."""
    rdir = os.path.join(out, run["dir"])
    summary = _load(os.path.join(rdir, "train.json"))
    rec = {k: run.get(k) for k in ("part", "network", "method", "seed", "dir", "strength", "key", "value",
                                   "overrides", "validation")}
    rec.update(steps=summary.get("steps"), planned_steps=run["steps"], schedule=summary.get("schedule"),
               losses=summary.get("losses", {}), stage_cosines=summary.get("stage_cosines", {}),
               img_per_s=summary.get("img_per_s"), params_sha1=summary.get("params_sha1"))
    if run["part"] == "tuning":
        rec["val"] = {"accuracy": fair.val_accuracy(rdir), "pairs": counts.get("val")}
    else:
        rec.update(study_report.protocol_results(rdir, counts))
    return rec


def group(rec):
    """The row a run belongs to: (network, method, strength)."""
    return rec["network"], rec["method"], rec.get("strength")


def paired_rows(records, treated, control):
    """Per protocol, the paired difference ``treated - control`` over the seeds both have."""
    a = {r["seed"]: r for r in records if group(r) == treated}
    b = {r["seed"]: r for r in records if group(r) == control}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return []
    rows = []
    for prot in PROTOCOLS:
        res = stats.paired_difference([study_report.metric(a[s], prot) for s in seeds],
                                      [study_report.metric(b[s], prot) for s in seeds])
        rows.append({"network": treated[0], "method": treated[1], "strength": treated[2], "vs": list(control[1:]),
                     "protocol": prot, "seeds": seeds, **res, "verdict": stats.verdict(res)})
    return rows


def paired_table(records):
    """Every (network, method, strength) row against the self-studied run, then the contrasts."""
    groups = sorted({group(r) for r in records if fair.learns_from_teacher(r)},
                    key=lambda g: (g[0], g[1], str(g[2])))
    paired, contrasts = [], []
    for g in groups:
        paired += paired_rows(records, g, (g[0], fair.SELF, None))
        if g[2] == "tuned":
            contrasts += paired_rows(records, g, (g[0], g[1], "default"))
    for net in sorted({r["network"] for r in records}):
        for a, b in CONTRASTS:
            ga = next((g for g in groups if g[:2] == (net, a) and g[2] != "tuned"), None)
            gb = next((g for g in groups if g[:2] == (net, b) and g[2] != "tuned"), None)
            if ga and gb:
                contrasts += paired_rows(records, ga, gb)
    return paired, contrasts


def build_part(out, scale, part, runs, merged=None):
    """The content of ``out/<part>/study.json``: every finished run (this folder's, else a
    ``merged`` record from ``read_merged``), the missing ones by folder."""
    counts = data_counts(os.path.join(out, "synth"))
    teacher = table_teacher(out, part, merged)
    records, missing, skipped = [], [], []
    for r in runs:
        if finished(out, r):
            rec = run_record(out, r, counts)
            rec["teacher_sha1"] = teacher_of(rec, teacher)
        else:
            rec = merged_record(part, r, merged, teacher, skipped)
        if rec is None:
            missing.append(r["dir"])
        else:
            records.append(rec)
    study = {"part": part, "scale": scale["name"], "scale_fingerprint": scale_fingerprint(scale),
             "budget_steps": scale["budget_steps"], "teacher_sha1": teacher, "runs": records, "missing": missing,
             "not_merged": skipped, "counts": counts}
    if part in ("main", "efficiency"):
        study["paired"], study["contrasts"] = paired_table(records)
    if part == "tuning":
        fresh = fair.select(out, scale, sorted({r["network"] for r in runs}))
        study["selection"], study["selection_copied"] = fair.keep_copied(fresh, fair.read_selection(out))
    times = os.path.join(out, part, fair.TIMES)
    if os.path.isfile(times):
        study["times"] = _load(times)
    return study


# ---------------------------------------------------------------------------------------------
# Budget curves: convergence and "steps for the self-studied student to match"
# ---------------------------------------------------------------------------------------------
def budget_curve(records, network, method=fair.SELF, keys=tuple(PROTOCOLS)):
    """``[(steps, {protocol: value})]`` of the calibration runs of one network and method, by steps."""
    pts = [(r["steps"], {k: study_report.metric(r, k) for k in keys}) for r in records
           if r["network"] == network and r["method"] == method]
    return sorted(pts, key=lambda p: p[0])


def converged_budget(curve, keys=CONVERGENCE_SETS, tol=CONVERGENCE_TOL):
    """The smallest budget whose next (doubled) budget moves every ``keys`` value by less than
    ``tol``: ``{budget, residual}``; ``budget`` None when no doubling is that flat, and
    ``residual`` the largest move of the last doubling (in fractions)."""
    moves = []
    for (s0, v0), (_, v1) in zip(curve, curve[1:]):
        move = max(abs(v1[k] - v0[k]) for k in keys)
        moves.append(move)
        if move < tol:
            return {"budget": s0, "residual": move}
    return {"budget": None, "residual": moves[-1] if moves else None}


def steps_to_match(curve, target):
    """Steps at which a budget curve ``[(steps, value)]`` (increasing steps) first reaches
    ``target``, interpolated linearly in log2(steps) between the two budgets around the crossing
    (the budgets double).  ``("at most", s0)`` when the smallest budget already reaches it,
    ``("not reached", None)`` when no budget does, else ``("interpolated", steps)``."""
    if not curve or target is None:
        return ("not reached", None)
    if curve[0][1] >= target:
        return ("at most", float(curve[0][0]))
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if v1 >= target:
            f = (target - v0) / (v1 - v0)
            return ("interpolated", float(2 ** (math.log2(s0) + f * (math.log2(s1) - math.log2(s0)))))
    return ("not reached", None)


def match_table(calibration, efficiency):
    """Per efficiency row and protocol: how many self-studied steps give its mean (``steps_to_match``)."""
    rows = []
    for g in sorted({group(r) for r in efficiency["runs"]}, key=lambda g: (g[0], g[1], str(g[2]))):
        curve = budget_curve(calibration["runs"], g[0])
        for prot in PROTOCOLS:
            mean, _ = stats.mean_std([study_report.metric(r, prot) for r in efficiency["runs"] if group(r) == g])
            how, steps = steps_to_match([(s, v[prot]) for s, v in curve if v[prot] is not None], mean)
            if not curve:
                how = "no calibration curve"
            rows.append({"network": g[0], "method": g[1], "strength": g[2], "protocol": prot, "mean": mean,
                         "match": how, "steps": steps})
    return rows


# ---------------------------------------------------------------------------------------------
# REPORT.md
# ---------------------------------------------------------------------------------------------
def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _pts(v):
    return "-" if v is None else f"{100 * v:+.2f}"


def _row_name(g, names):
    net, method, strength = g
    label = names.get(method, method)
    if strength == "tuned":
        label += " (tuned)"
    return label


def status_section(parts):
    """Which parts finished, what each still misses, and what each cost."""
    lines = ["## Parts\n", "| part | runs finished | missing | wall time (min) | core-hours |", "|---|---|---|---|---|"]
    for part in fair.PARTS:
        st = parts.get(part)
        if st is None:
            lines.append(f"| {part} | 0 | not run: `shrinkteanet reproduce --scale fair --part {part}` | - | - |")
            continue
        miss = st["missing"]
        text = "none" if not miss else f"{len(miss)}: " + ", ".join(miss[:4]) + (", ..." if len(miss) > 4 else "")
        t = st.get("times") or {}
        wall = f"{t['wall_s'] / 60:.1f}" if t.get("wall_s") is not None else "-"
        core = f"{t['core_s'] / 3600:.2f}" if t.get("core_s") is not None else "-"
        lines.append(f"| {part} | {len(st['runs'])} | {text} | {wall} | {core} |")
    notes = merge_notes(parts)
    return lines + [""] + notes + ([""] if notes else [])


def merge_notes(parts):
    """One line per part and source of merged runs (``read_merged``)."""
    notes = []
    for part, st in parts.items():
        sources = {}
        for r in st["runs"]:
            if r.get("merged_from"):
                sources[r["merged_from"]] = sources.get(r["merged_from"], 0) + 1
        notes += [f"- {part}: {n} runs merged from `{src}` (another work folder; the wall time above is this "
                  "folder's only)" for src, n in sorted(sources.items())]
        notes += [f"- {part}: {s['dir']} of `{s['merged_from']}` not merged: {s['why']}"
                  for s in st.get("not_merged", ())]
    return notes


def curve_section(study, names):
    lines = ["## Calibration: accuracy against budget (seed 0)\n",
             "| network | method | steps | " + " | ".join(h for h, _, _ in PROTOCOLS.values()) + " |",
             "|---|---|---|" + "---|" * len(PROTOCOLS)]
    nets = sorted({r["network"] for r in study["runs"]})
    for net in nets:
        for method in ("teacher", fair.SELF):
            for steps, v in budget_curve(study["runs"], net, method):
                lines.append(f"| {net} | {names.get(method, method)} | {steps} | "
                             + " | ".join(_pct(v[k]) for k in PROTOCOLS) + " |")
    lines.append("")
    for net in nets:
        c = converged_budget(budget_curve(study["runs"], net, "teacher" if net == "r90" else fair.SELF))
        res = "-" if c["residual"] is None else f"{100 * c['residual']:.2f}"
        if c["residual"] is None:
            lines.append(f"- {net}: one budget only, no doubling measured")
            continue
        lines.append(f"- {net}: " + (f"converged at {c['budget']} steps (doubling moves LFW/CFP-FP/AgeDB-30 by at "
                                     f"most {res} points)" if c["budget"] else
                                     f"not converged at any measured budget (the last doubling moved by {res} points)"))
    return lines + [""]


def tuning_section(study, names):
    lines = ["## Tuning on the validation split (one seed)\n",
             f"Metric: {fair.VAL_METRIC}; the test sets are not read.\n",
             "| network | method | key | grid: val accuracy | default | chosen |", "|---|---|---|---|---|---|"]
    for net, methods in sorted(study["selection"].items()):
        for method, s in methods.items():
            grid = ", ".join(f"{v}: {_pct(a)}" for v, a in s["grid"].items())
            chosen = "missing runs" if s["chosen"] is None else s["chosen"]
            lines.append(f"| {net} | {names.get(method, method)} | `{s['key']}` | {grid} | {s['default']} | {chosen} |")
    if study.get("selection_copied"):
        lines += ["", f"From a `tuning/selection.json` copied into this folder (the grid's runs and val.bin reports are "
                      f"in the folder that ran them): {', '.join(study['selection_copied'])}."]
    return lines + [""]


def means_section(study, names, title):
    lines = [f"## {title}\n", "Mean ± sample std over seeds (n = seeds).\n",
             "| network | method | n | " + " | ".join(h for h, _, _ in PROTOCOLS.values()) + " |",
             "|---|---|---|" + "---|" * len(PROTOCOLS)]
    groups = sorted({group(r) for r in study["runs"]}, key=lambda g: (g[1] != "teacher", g[0], g[1] != fair.SELF, g[1], str(g[2])))
    for g in groups:
        runs = [r for r in study["runs"] if group(r) == g]
        cells = []
        for prot in PROTOCOLS:
            m, s = stats.mean_std([study_report.metric(r, prot) for r in runs])
            cells.append(_pct(m) + ("" if s is None else f" ± {100 * s:.2f}"))
        lines.append(f"| {g[0]} | {_row_name(g, names)} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines + [""]


def paired_section(rows, names, title):
    """Paired differences (points) with the 95% t interval, and the verdict, one row per comparison."""
    lines = [f"### {title}\n", "| network | method | vs | " + " | ".join(h for h, _, _ in PROTOCOLS.values()) + " |",
             "|---|---|---|" + "---|" * len(PROTOCOLS)]
    keys = []
    for r in rows:
        k = (r["network"], r["method"], r["strength"], tuple(r["vs"]))
        if k not in keys:
            keys.append(k)
    for k in keys:
        cells = []
        for prot in PROTOCOLS:
            r = next(x for x in rows if (x["network"], x["method"], x["strength"], tuple(x["vs"])) == k
                     and x["protocol"] == prot)
            ci = "" if not r["ci95"] else f" [{_pts(r['ci95'][0])}, {_pts(r['ci95'][1])}]"
            cells.append(f"{_pts(r['mean_diff'])}{ci} {r['verdict']} (n={r['n']})")
        vs = _row_name((k[0], k[3][0], k[3][1]), names) + (" (default)" if k[3][1] == "default" else "")
        lines.append(f"| {k[0]} | {_row_name(k[:3], names)} | {vs} | " + " | ".join(cells) + " |")
    return lines + [""]


def _match_text(row):
    if row["steps"] is None:
        return row["match"] if row["mean"] is not None else "-"
    return ("<= " if row["match"] == "at most" else "") + f"{row['steps']:.0f}"


def match_section(rows, names):
    lines = ["### Steps for the self-studied student to match\n",
             "Read off the calibration's self-studied curve (seed 0), linear in log2(steps) between budgets.\n",
             "| network | method | " + " | ".join(h for h, _, _ in PROTOCOLS.values()) + " |",
             "|---|---|" + "---|" * len(PROTOCOLS)]
    keys = []
    for r in rows:
        if (r["network"], r["method"], r["strength"]) not in keys:
            keys.append((r["network"], r["method"], r["strength"]))
    for k in keys:
        cells = []
        for prot in PROTOCOLS:
            r = next(x for x in rows if (x["network"], x["method"], x["strength"]) == k and x["protocol"] == prot)
            cells.append(_match_text(r))
        lines.append(f"| {k[0]} | {_row_name(k, names)} | " + " | ".join(cells) + " |")
    return lines + [""]


def student_steps(runs):
    """The students' budget of a part's runs (the teacher's row of ``main`` trains its own, longer one)."""
    steps = sorted({r["steps"] for r in runs if r["method"] != "teacher"})
    return ", ".join(f"{s:,}" for s in steps) or "-"


def _grid_label(rec, names):
    """A tuning run's row: the method and its grid value (``ShrinkTeaNet `stn_weight`=3``)."""
    return f"{names.get(rec['method'], rec['method'])} `{rec['key']}`={rec['value']}"


def cosine_lines(study, names, row):
    """The student-teacher cosine per stage at the end of each row's runs (issue 26: reported
    for every strength), or nothing when no run had a teacher embedding."""
    if not any(r.get("stage_cosines") for r in study["runs"]):
        return []
    return ["### Student-teacher cosine per stage at the end\n", study_report.cosine_section(study, names, row=row)]


def render(parts, names):
    """REPORT.md of the fair study from the parts' study.json contents (``{part: study}``)."""
    lines = ["# ShrinkTeaNet fair study (issue 26)\n",
             "Students trained as long as their teacher; every method at its published default and at one "
             "strength tuned on the validation split. Parts that have not finished are listed as missing.\n"]
    lines += status_section(parts)
    if "calibration" in parts:
        lines += curve_section(parts["calibration"], names)
    if "tuning" in parts:
        lines += tuning_section(parts["tuning"], names)
        lines += cosine_lines(parts["tuning"], names, row=lambda r: (r["network"], _grid_label(r, names)))
    for part, title in (("main", "Main table: the calibrated budget (`budget_steps`; docs/reproduction.md states "
                                 "what doubling it still adds)"),
                        ("efficiency", "Sample efficiency: a quarter of the budget")):
        st = parts.get(part)
        if st is None:
            continue
        lines += means_section(st, names, f"{title} ({student_steps(st['runs'])} steps)")
        lines += paired_section(st["paired"], names, "Paired differences to the self-studied student (points)")
        if st["contrasts"]:
            lines += paired_section(st["contrasts"], names, "Contrasts (points)")
        lines += cosine_lines(st, names, row=lambda r: (r["network"], _row_name(group(r), names)))
        if part == "efficiency" and st.get("steps_to_match"):
            lines += match_section(st["steps_to_match"], names)
    return "\n".join(lines)


def write_report(out, parts, names):
    """Write each part's ``study.json`` and the merged ``out/REPORT.md``; returns the report path."""
    if "efficiency" in parts and "calibration" in parts:
        parts["efficiency"]["steps_to_match"] = match_table(parts["calibration"], parts["efficiency"])
    for part, study in parts.items():
        write_json(os.path.join(out, part, "study.json"), study)
    path = os.path.join(out, "REPORT.md")
    atomic_write_bytes(path, render(parts, names).encode())
    return path
