"""`make demo`'s effect, labelled for what it is (issue 26): a sample-efficiency result,
"distilled at N steps vs self-studied at N and at 4N".

The demo trains its students a fraction of the teacher's steps, so a distilled student's lead
over the self-studied one at the same N steps says how much faster it learns, not how far it
ends.  A scale with ``self_multiple`` (``small``: 4) adds one self-studied run per student
network and seed at ``self_multiple`` times the student budget (the same schedule shape); it
needs no teacher, so it trains beside it.  Its REPORT.md section sets the distilled students at N
beside the self-studied ones at N and at 4N.
"""
import os

from shrinkteanet.study import study_report


def long_self_runs(scale, students, seeds):
    """The extra self-studied runs at ``self_multiple`` x the budget (none without the field)."""
    k = scale.get("self_multiple")
    if not k:
        return []
    return [dict(network=net, method="self", seed=int(seed), multiple=int(k),
                 dir=f"{net}_self_x{k}" + (f"_s{seed}" if len(seeds) > 1 else ""))
            for net in students for seed in seeds]


def long_self_overrides(scale, overrides):
    """The student overrides with ``self_multiple`` x the epochs and the same schedule shape."""
    from shrinkteanet.study import demo

    epochs = scale["student_epochs"] * int(scale["self_multiple"])
    out = [a for a in overrides if not a.startswith(("num_epochs=", "lr_steps="))]
    return out + [f"num_epochs={epochs}", f"lr_steps={demo._lr_steps(epochs)}"]


def _metrics(out, run_dir):
    rdir = os.path.join(out, run_dir)
    if not os.path.isfile(os.path.join(rdir, "train.json")):
        return None, None
    res = study_report.protocol_results(rdir, {})
    return study_report._load(os.path.join(rdir, "train.json")).get("steps"), res


def section(out, meta, names):
    """The Markdown section: per student network (first seed), self at N, each distilled method at
    N, self at k x N; '' when the scale has no long self-studied run."""
    long_runs = meta.get("long_self") or []
    if not long_runs:
        return ""
    k = long_runs[0]["multiple"]
    lines = []
    for lr in long_runs:
        if lr["seed"] != meta["seeds"][0]:
            continue
        rows = [r for r in meta["runs"] if r["network"] == lr["network"] and r["seed"] == lr["seed"]]
        n_steps = _metrics(out, rows[0]["dir"])[0] if rows else None
        lines += [f"## Sample efficiency: distilled at N steps vs self-studied at N and at {k}N\n",
                  f"N = {n_steps} steps ({lr['network']}, seed {lr['seed']}). The demo's students train a fraction "
                  "of the teacher's steps, so this measures how much faster a distilled student learns, not "
                  "its accuracy at convergence (the fair study, `shrinkteanet reproduce --part main`, measures that).\n",
                  "| run | steps | " + " | ".join(h for h, _, _ in study_report.PROTOCOLS.values()) + " |",
                  "|---|---|" + "---|" * len(study_report.PROTOCOLS)]
        for r in sorted(rows, key=lambda r: r["method"] != "self") + [lr]:
            steps, res = _metrics(out, r["dir"])
            label = names.get(r["method"], r["method"]) + (f" at {k}N" if r is lr else " at N")
            cells = ["-" if res is None or study_report.metric(res, p) is None
                     else f"{100 * study_report.metric(res, p):.2f}" for p in study_report.PROTOCOLS]
            lines.append(f"| {label} | {steps if steps is not None else '-'} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def insert_section(report_path, text, before="## Paired differences to the self-studied student"):
    """Put ``text`` into REPORT.md before the paired-differences section (atomically)."""
    from shrinkteanet.core.utils import atomic_write_bytes

    if not text:
        return
    with open(report_path) as f:
        report = f.read()
    i = report.find(before)
    report = report[:i] + text + "\n" + report[i:] if i >= 0 else report + "\n" + text
    atomic_write_bytes(report_path, report.encode())
