"""The study's results: ``study.json`` (CONTRACTS "Study results") and the REPORT.md sections
that judge the methods: paired differences to the self-studied student with 95% t intervals,
one verdict line per protocol, the distillation-weight ablation, the student-teacher cosine
per stage, convergence per run with loss curves, and the standard error of each protocol.

Reads what the runs wrote (``train.json``: steps, final loss parts, ``curve``, ``stage_cosines``;
``eval/*.json``; the data's ``synth.json``); the numbers come from ``shrinkteanet.study.stats``.
"""
import io
import os

import numpy as np

from shrinkteanet.study import stats
from shrinkteanet.core.utils import atomic_write_bytes, write_json

#: protocol key -> (heading, metric name in study.json, count name); the order of every table
PROTOCOLS = {
    "lfw": ("LFW", "accuracy", "pairs"),
    "cfp_fp": ("CFP-FP", "accuracy", "pairs"),
    "agedb_30": ("AgeDB-30", "accuracy", "pairs"),
    "megaface": ("MegaFace rank-1", "rank1", "trials"),
    "ijbc": ("IJB-C TAR@FAR=1e-4", "tar@1e-4", "genuine_pairs"),
}
SELF = "self"


def _load(path):
    import json

    with open(path) as f:
        return json.load(f)


def protocol_results(run_dir, counts):
    """``{protocol: {metric: value, count: n, ...}}`` of one run's evaluations."""
    ev = os.path.join(run_dir, "eval")
    ver = _load(os.path.join(ev, "verification.json"))
    mf = _load(os.path.join(ev, "megaface.json"))
    ij = _load(os.path.join(ev, "ijbc.json"))
    out = {t: {"accuracy": float(ver[t]["accuracy"]), "pairs": counts.get(t)} for t in ("lfw", "cfp_fp", "agedb_30")}
    sizes = sorted(int(k) for k, v in mf["rank1"].items() if v is not None)
    out["megaface"] = {"rank1": float(mf["rank1"][str(sizes[-1])]) if sizes else None,
                       "probes": mf.get("num_probes"), "trials": mf.get("num_trials"),
                       "distractors": sizes[-1] if sizes else None}
    out["ijbc"] = {"tar@1e-4": ij["tar_at_far"].get("0.0001"), "pairs": ij.get("num_pairs"),
                   "genuine_pairs": ij.get("num_genuine")}
    return out


def data_counts(data_dir):
    """Pair counts of the verification sets from the synthetic set's summary (``synth.json``)."""
    path = os.path.join(data_dir, "synth.json")
    if not os.path.isfile(path):
        return {}
    bins = _load(path).get("bins", {})
    return {name: b.get("pairs") for name, b in bins.items()}


def metric(run, protocol):
    return run[protocol][PROTOCOLS[protocol][1]]


def run_record(out, run, counts):
    """One ``runs`` entry of study.json."""
    rdir = os.path.join(out, run["dir"])
    summary = _load(os.path.join(rdir, "train.json"))
    rec = {"network": run["network"], "method": run["method"], "seed": run["seed"], "dir": run["dir"],
           "steps": summary.get("steps"), "losses": summary.get("losses", {}),
           "convergence": stats.plateau(summary.get("curve", [])),
           "stage_cosines": summary.get("stage_cosines", {}), "img_per_s": summary.get("img_per_s")}
    rec.update(protocol_results(rdir, counts))
    return rec


def paired_table(records, networks, methods):
    """Per network, method (every one but ``self``) and protocol: the paired difference to the
    self-studied run of the same seed, with its verdict."""
    rows = []
    for net in networks:
        base = {r["seed"]: r for r in records if r["network"] == net and r["method"] == SELF}
        for method in methods:
            if method == SELF:
                continue
            runs = {r["seed"]: r for r in records if r["network"] == net and r["method"] == method}
            seeds = sorted(set(runs) & set(base))
            if not seeds:
                continue
            for prot in PROTOCOLS:
                res = stats.paired_difference([metric(runs[s], prot) for s in seeds],
                                              [metric(base[s], prot) for s in seeds])
                rows.append({"network": net, "method": method, "protocol": prot, **res,
                             "verdict": stats.verdict(res)})
    return rows


def build_study(out, meta, data_dir):
    """The content of study.json."""
    counts = data_counts(data_dir)
    teacher_dir = os.path.join(out, meta["teacher"]["dir"])
    teacher = {"network": meta["teacher"]["network"], "dir": meta["teacher"]["dir"],
               **protocol_results(teacher_dir, counts)}
    tsum = _load(os.path.join(teacher_dir, "train.json"))
    teacher.update(steps=tsum.get("steps"), losses=tsum.get("losses", {}),
                   convergence=stats.plateau(tsum.get("curve", [])))
    records = [run_record(out, r, counts) for r in meta["runs"]]
    return {"scale": meta["scale"], "seeds": meta["seeds"], "jobs": meta.get("jobs"),
            "elapsed_s": meta.get("elapsed_s"), "date": meta.get("date"),
            "convergence_criterion": f"at the final lr, objective of the last quarter of the curve points at "
                                     f"that lr at most {100 * stats.PLATEAU_TOL:g}% below the quarter before",
            "teacher": teacher, "runs": records,
            "paired": paired_table(records, meta["students"], meta["methods"])}


def write_study_json(out, study):
    path = os.path.join(out, "study.json")
    write_json(path, study)
    return path


# ---------------------------------------------------------------------------------------------
# Markdown sections
# ---------------------------------------------------------------------------------------------
def _pts(v):
    return "-" if v is None else f"{100 * v:+.2f}"


def _ci(ci):
    return "-" if not ci else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def paired_section(study, names, net_names):
    """The paired differences (points) to self-studied, then one verdict line per protocol."""
    rows = study["paired"]
    if not rows:
        return "Not computed: no method has a self-studied run with the same seed.\n"
    heads = [h for h, _, _ in PROTOCOLS.values()]
    lines = ["Paired over seeds (same seed, data order and schedule): mean of (method - self-studied) in "
             "points, and its 95% t interval over the n seeds.\n",
             "| Network | Method | n | " + " | ".join(heads) + " |", "|---|---|---|" + "---|" * len(heads)]
    by = {(r["network"], r["method"], r["protocol"]): r for r in rows}
    keys = []
    for r in rows:
        if (r["network"], r["method"]) not in keys:
            keys.append((r["network"], r["method"]))
    for net, method in keys:
        cells = [f"{_pts(by[(net, method, p)]['mean_diff'])} {_ci(by[(net, method, p)]['ci95'])}"
                 for p in PROTOCOLS]
        lines.append(f"| {net} | {names.get(method, method)} | {by[(net, method, 'lfw')]['n']} | "
                     + " | ".join(cells) + " |")
    lines.append("\n### Verdicts (95% interval above zero: better; below: worse; else within noise; "
                 "one seed: no interval)\n")
    for net in dict.fromkeys(r["network"] for r in rows):
        for prot, (head, _, _) in PROTOCOLS.items():
            groups = {"better": [], "worse": [], "within noise": [], "one seed": []}
            for r in rows:
                if r["network"] == net and r["protocol"] == prot:
                    groups[r["verdict"]].append(names.get(r["method"], r["method"]))
            text = "; ".join(f"**{k}**: {', '.join(v)}" for k, v in groups.items() if v)
            lines.append(f"- {net_names.get(net, net)}, {head}: {text}.")
    return "\n".join(lines) + "\n"


def ablation_section(study, pairs, names):
    """Distillation weight: each (paper weight, larger weight) method pair, the larger minus the
    paper's, paired over seeds."""
    lines = []
    for base, big in pairs:
        for net in dict.fromkeys(r["network"] for r in study["runs"]):
            a = {r["seed"]: r for r in study["runs"] if r["network"] == net and r["method"] == base}
            b = {r["seed"]: r for r in study["runs"] if r["network"] == net and r["method"] == big}
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            if not lines:
                lines = ["| Network | Methods | n | " + " | ".join(h for h, _, _ in PROTOCOLS.values()) + " |",
                         "|---|---|---|" + "---|" * len(PROTOCOLS)]
            cells = []
            for prot in PROTOCOLS:
                res = stats.paired_difference([metric(b[s], prot) for s in seeds], [metric(a[s], prot) for s in seeds])
                cells.append(f"{_pts(res['mean_diff'])} {_ci(res['ci95'])}")
            lines.append(f"| {net} | {names.get(big, big)} - {names.get(base, base)} | {len(seeds)} | "
                         + " | ".join(cells) + " |")
    if not lines:
        return "Not run at this scale (no pair of weights among the methods).\n"
    return "Larger weight minus the paper's weight, paired over seeds, points [95% t interval].\n\n" \
        + "\n".join(lines) + "\n"


def cosine_section(study, names, row=None):
    """Mean student-teacher cosine per stage at the end of training (mean over seeds).  ``row``:
    a run record -> (network, row label), the runs averaged together; default network and method
    (the fair study's rows also tell a tuned strength from the default)."""
    row = row or (lambda r: (r["network"], names.get(r["method"], r["method"])))
    rows = {}
    for r in study["runs"]:
        if r.get("stage_cosines"):
            rows.setdefault(row(r), []).append(r["stage_cosines"])
    if not rows:
        return "No run had a teacher embedding to compare with.\n"
    lines = ["Cosine between the teacher's final embedding and the student's view of it (stage 4: the student's "
             "embedding; stage i < 4: adapter H_i, then the frozen teacher blocks after stage i), inference "
             "mode, on one training batch, mean over seeds.\n",
             "| Network | Method | stage 1 | stage 2 | stage 3 | stage 4 |", "|---|---|---|---|---|---|"]
    for (net, label), cos in rows.items():
        cells = []
        for st in ("1", "2", "3", "4"):
            vals = [c[st] for c in cos if st in c]
            cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        lines.append(f"| {net} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def convergence_section(study, names):
    """Per run: steps, final lr, the criterion's relative drop and verdict, the final loss parts."""
    lines = [f"Criterion: {study['convergence_criterion']}.  At the final lr every run looks flat, so this is not "
             "a test of convergence: the budget curves of the fair study (`reproduce --part calibration`, "
             "docs/reproduction.md) are.\n",
             "| Run | Steps | Final lr | Drop over the last window | Plateaued | Final loss parts |",
             "|---|---|---|---|---|---|"]
    entries = [("teacher", study["teacher"])] + [(r["dir"], r) for r in study["runs"]]
    flat = 0
    for name, r in entries:
        c = r["convergence"]
        flat += bool(c["plateaued"])
        drop = "-" if c.get("rel_drop") is None else f"{100 * c['rel_drop']:.2f}%"
        parts = ", ".join(f"{k} {v:.4f}" for k, v in r.get("losses", {}).items())
        lr = "-" if c.get("final_lr") is None else f"{c['final_lr']:.4g}"
        lines.append(f"| {name} | {r.get('steps')} | {lr} | {drop} | "
                     f"{'yes' if c['plateaued'] else 'no'} | {parts} |")
    lines.insert(1, f"**{flat} of {len(entries)} runs plateaued.**\n")
    return "\n".join(lines) + "\n"


def se_section(study):
    """Standard error of each protocol at the teacher's and the self-studied students' rates."""
    lines = ["Binomial standard error sqrt(p(1-p)/n) at the observed rate p, over the n independent units of "
             "each protocol (verification: pairs; MegaFace: ordered same-identity probe pairs, which share "
             "images, so the true error is larger; IJB-C: genuine template pairs).\n",
             "| Model | " + " | ".join(h for h, _, _ in PROTOCOLS.values()) + " |", "|---|" + "---|" * len(PROTOCOLS)]
    models = [("teacher", study["teacher"])]
    seen = set()
    for r in study["runs"]:
        if r["method"] == SELF and r["network"] not in seen:
            seen.add(r["network"])
            models.append((f"{r['network']} self-studied (seed {r['seed']})", r))
    for name, r in models:
        cells = []
        for prot, (_, key, count) in PROTOCOLS.items():
            p, n = r[prot][key], r[prot].get(count)
            se = stats.binomial_se(p, n)
            cells.append("-" if se is None else f"{100 * se:.2f} (n={n})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_curve_plot(out, study, names):
    """``loss_curves.png``: the objective against the step for every run (one panel per network,
    one colour per method, seeds overlaid); returns its file name or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(r["network"] for r in study["runs"]))
    if not nets:
        return None
    fig, axes = plt.subplots(1, len(nets) + 1, figsize=(5 * (len(nets) + 1), 3.6), squeeze=False)
    _curve_panel(axes[0][0], [("teacher", _load(os.path.join(out, study["teacher"]["dir"], "train.json")))], "teacher")
    methods = list(dict.fromkeys(r["method"] for r in study["runs"]))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, net in zip(axes[0][1:], nets):
        runs = [(r["method"], _load(os.path.join(out, r["dir"], "train.json"))) for r in study["runs"]
                if r["network"] == net]
        _curve_panel(ax, runs, net, colours, names)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(os.path.join(out, "loss_curves.png"), buf.getvalue())
    return "loss_curves.png"


def _curve_panel(ax, runs, title, colours=None, names=None):
    labelled = set()
    for method, summary in runs:
        curve = summary.get("curve", [])
        if not curve:
            continue
        label = None if method in labelled else (names or {}).get(method, method)
        labelled.add(method)
        ax.plot([p["step"] for p in curve], [stats.curve_total(p) for p in curve], lw=0.9,
                color=(colours or {}).get(method), label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("objective (sum of loss parts)")
    ax.set_yscale("log")
    ax.grid(linestyle="--", linewidth=0.4)
    if colours:
        ax.legend(fontsize=6)
