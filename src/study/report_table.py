"""REPORT.md of the demo: the paper's Table 2 layout (ShrinkTeaNet, Duong et al. 2019) filled
from the JSON files the real runs wrote, with the paper's numbers beside ours.

Inputs, per run folder (``teacher`` and ``<net>_<method>[_s<seed>]``): ``train.json`` (trainer
summary), ``eval/verification.json`` (CONTRACTS verification fields), ``eval/megaface.json``
(``rank1`` by distractor count), ``eval/ijbc.json`` (``tar_at_far``), and the checkpoint itself
for parameters and FLOPs (``symbols.measure.count_params`` / ``count_flops``).  Columns: LFW, CFP-FP,
AgeDB-30 accuracy (Table 2), MegaFace challenge-1 rank-1 at the largest distractor set
(Table 4) and IJB-C TAR at FAR=1e-4 (Table 5).  With several seeds a cell is mean +- sample
std over seeds, and the ordering ShrinkTeaNet > L2 > self-studied is checked on every
protocol on those means.
"""
import json
import os

import numpy as np

from shrinkteanet.study import paper
from shrinkteanet.study import stats
from shrinkteanet.study import study_report
from shrinkteanet.symbols import registry as network_registry
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import atomic_write_bytes
from shrinkteanet.methods.base import registry as method_registry

log = get_logger(__name__)

#: (column key, heading) of Table 2's layout plus the MegaFace and IJB-C columns
PROTOCOLS = tuple((key, head) for key, (head, _, _) in study_report.PROTOCOLS.items())
#: network key -> the name the report prints, from the network registry
NET_NAMES = network_registry.display_names()
IJB_FAR_KEY = "0.0001"




def method_names():
    """Study method key -> display name in the report (the teacher and every
    study row of the method registry).  A fresh dict."""
    return {"teacher": "Teacher", **{r.key: r.display for r in method_registry.study_rows()}}


def weight_ablation():
    """The distillation-weight ablation, ((method at the paper's weight, the
    same at a larger weight), ...), as the method modules declare it (``StudyRow.ablation_of``)."""
    return method_registry.ablation_pairs()


def _config_suffix(method):
    """The named-config suffix a study method trains (``<network>_<suffix>``); the key itself
    for a key that is no study row."""
    row = next((r for r in method_registry.study_rows() if r.key == method), None)
    return method_registry.study_config_suffix(row) if row is not None else method


def _load(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(run_dir):
    """``{lfw, cfp_fp, agedb_30, megaface, ijbc}`` fractions of one run plus the details the notes use."""
    ev = os.path.join(run_dir, "eval")
    ver = _load(os.path.join(ev, "verification.json"))
    mf = _load(os.path.join(ev, "megaface.json"))
    ij = _load(os.path.join(ev, "ijbc.json"))
    out = {t: float(ver[t]["accuracy"]) for t in ("lfw", "cfp_fp", "agedb_30")}
    sizes = sorted((int(k) for k, v in mf["rank1"].items() if v is not None))
    out["megaface"] = float(mf["rank1"][str(sizes[-1])]) if sizes else None
    out["megaface_distractors"] = sizes[-1] if sizes else None
    out["megaface_probes"] = mf.get("num_probes")
    out["ijbc"] = ij["tar_at_far"].get(IJB_FAR_KEY)
    out["ijbc_all"] = ij["tar_at_far"]
    out["ijbc_auc"] = ij.get("auc")
    return out


def model_stats(run_dir, image_size):
    """(embedding parameters, multiply-add FLOPs) of the run's checkpoint at ``image_size``."""
    from shrinkteanet.symbols import measure
    from shrinkteanet.model.checkpoint import load_checkpoint

    s = _load(os.path.join(run_dir, "train.json"))
    sym, _, _ = load_checkpoint(s["prefix"], int(s["checkpoint"]))
    return measure.count_params(sym, image_size)[0], measure.count_flops(sym, image_size)


_FULL = {}


def full_size_stats(network):
    """(parameters, FLOPs) of the full-size network (512-d, 112x112), as our symbols build it."""
    if network not in _FULL:
        from shrinkteanet import symbols
        from shrinkteanet.symbols import measure

        sym = symbols.get_symbol(network, 512)
        _FULL[network] = (measure.count_params(sym, 112)[0], measure.count_flops(sym, 112))
    return _FULL[network]


def _pct(v, std=None):
    if v is None:
        return "-"
    s = f"{100 * v:.2f}"
    if std is not None:
        s += f" ± {100 * std:.2f}"
    return s


def collect(out, meta):
    """Rows of the table: ``[(network, method, {key: (mean, std)}, [per-seed metrics], stats)]``."""
    rows = []
    tdir = os.path.join(out, meta["teacher"]["dir"])
    tm = read_metrics(tdir)
    rows.append(("r90", "teacher", {k: (tm[k], None) for k, _ in PROTOCOLS}, [tm],
                 model_stats(tdir, meta["image_size"])))
    for net in meta["students"]:
        for method in meta["methods"]:
            runs = [r for r in meta["runs"] if r["network"] == net and r["method"] == method]
            if not runs:
                continue
            per = [read_metrics(os.path.join(out, r["dir"])) for r in runs]
            cells = {k: stats.mean_std([p[k] for p in per]) for k, _ in PROTOCOLS}
            rows.append((net, method, cells, per, model_stats(os.path.join(out, runs[0]["dir"]), meta["image_size"])))
    return rows


def ordering(rows, methods=("stn", "l2", "self")):
    """Per student network and protocol: does mean(stn) > mean(l2) > mean(self) hold?
    Returns ``{network: {protocol: (holds, [means in methods order])}}``."""
    res = {}
    by = {(n, m): cells for n, m, cells, _, _ in rows}
    for net in sorted({n for n, m, *_ in rows if m != "teacher"}, key=lambda n: [r[0] for r in rows].index(n)):
        if not all((net, m) in by for m in methods):
            continue
        res[net] = {}
        for key, _ in PROTOCOLS:
            means = [by[(net, m)][key][0] for m in methods]
            holds = None if any(v is None for v in means) else all(a > b for a, b in zip(means, means[1:]))
            res[net][key] = (holds, means)
    return res


def _ordering_text(order):
    lines = []
    total = held = 0
    for net, prot in order.items():
        ok = [p for p, (h, _) in prot.items() if h]
        bad = [p for p, (h, _) in prot.items() if h is False]
        total += len(ok) + len(bad)
        held += len(ok)
        names = dict(PROTOCOLS)
        if not bad:
            lines.append(f"- **{NET_NAMES.get(net, net)}**: the paper's ordering ShrinkTeaNet > L2 > self-studied "
                         f"**holds** on every protocol ({', '.join(names[p] for p in ok)}).")
        else:
            detail = "; ".join(
                f"{names[p]}: " + " / ".join(_pct(v) for v in prot[p][1]) for p in bad)
            lines.append(f"- **{NET_NAMES.get(net, net)}**: the ordering ShrinkTeaNet > L2 > self-studied **does not "
                         f"hold** on {len(bad)} of {len(ok) + len(bad)} protocols ({detail}, as ShrinkTeaNet / L2 / "
                         f"self-studied)" + (f"; it holds on {', '.join(names[p] for p in ok)}." if ok else "."))
    if total:
        verdict = "holds on every protocol" if held == total else f"holds on {held} of {total} (network, protocol) pairs"
        lines.insert(0, f"In this run the paper's ordering (ShrinkTeaNet > L2 > self-studied) **{verdict}**.\n")
    return "\n".join(lines) + "\n"


def _plots(out, meta, rows):
    """Per-method plot grid linking each evaluation's own PNGs (ROC, IJB-C ROC, MegaFace CMC),
    and one bar chart of every protocol by method written here."""
    lines = ["| run | verification ROC | IJB-C ROC | MegaFace CMC |", "|---|---|---|---|"]
    firsts = [("teacher", "teacher")]
    for net in meta["students"]:
        for method in meta["methods"]:
            r = next((r for r in meta["runs"] if r["network"] == net and r["method"] == method), None)
            if r:
                firsts.append((f"{net} {method_names()[method]}", r["dir"]))
    for label, d in firsts:
        cells = []
        for rel in ("eval/verification/roc.png", "eval/ijbc/roc.png", "eval/megaface/cmc.png"):
            p = f"{d}/{rel}"
            cells.append(f"![{label}]({p})" if os.path.isfile(os.path.join(out, p)) else "(missing)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    bar = _bar_chart(out, rows)
    text = "\n".join(lines) + "\n"
    if bar:
        text = f"![every protocol by method]({bar})\n\n" + text
    return text


def _bar_chart(out, rows):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = [r for r in rows if r[1] != "teacher"]
    if not students:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(students)
    x = np.arange(len(PROTOCOLS))
    for i, (net, method, cells, _, _) in enumerate(students):
        means = [cells[k][0] if cells[k][0] is not None else 0.0 for k, _ in PROTOCOLS]
        errs = [cells[k][1] or 0.0 for k, _ in PROTOCOLS]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=errs, label=f"{net} {method_names()[method]}")
    ax.set_xticks(x)
    ax.set_xticklabels([h for _, h in PROTOCOLS], fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", linestyle="--", linewidth=0.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(os.path.join(out, "protocols.png"), buf.getvalue())
    return "protocols.png"


def render(out, meta):
    """The Markdown text of REPORT.md."""
    rows = collect(out, meta)
    lines = _intro(meta) + _table2(rows, len(meta["seeds"]))
    lines.extend(_study_sections(out, meta))
    order = ordering(rows)
    lines.append("## Does the paper's ordering hold here?\n")
    lines.append(_ordering_text(order) if order else "Not checked: a method is missing.\n")
    if len(meta["seeds"]) > 1:
        lines.extend(_every_seed(rows, meta))
    lines.append("## Plots\n")
    lines.append(_plots(out, meta, rows))
    lines.extend(_setup(meta))
    lines.extend(_stages(meta))
    return "\n".join(lines)


def _intro(meta):
    return [f"# {meta['title']}\n",
            f"Scale **{meta['scale']}** ({meta['image_size']}x{meta['image_size']} synthetic faces), "
            f"seeds {', '.join(map(str, meta['seeds']))}, run {meta['date']}, "
            f"**{meta['elapsed_s'] / 60:.1f} minutes** wall time for the run that wrote this report "
            f"(stages already done are skipped and count 0).\n",
            "Every number below comes from a real run on this machine: synthetic data (`shrinkteanet data synth`), "
            "a small teacher and students trained with `shrinkteanet train`, evaluated with `shrinkteanet eval`. "
            "The data are synthetic and the networks tiny, so only the *comparison between methods* carries "
            "over to the paper; the absolute numbers do not.\n"]


def _table2(rows, nseeds):
    """The paper's Table 2 layout with our cells and the paper's numbers beside them."""
    hdr = ["Network", "Method", "Params (ours / full / paper)", "MFLOPs (ours / full)"] + [h for _, h in PROTOCOLS]
    lines = ["## Table 2 layout: accuracy (%), ours (paper)\n",
             "Cells: ours" + (" as mean ± std over seeds" if nseeds > 1 else "") +
             ", the paper's value in parentheses where the paper reports one (LFW/CFP-FP/AgeDB-30: Table 2; "
             "MegaFace: Table 4, 1M distractors; IJB-C: Table 5). Paper rows are the full-size networks on MS1M.\n",
             "| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] * len(hdr)) + "|"]
    lines += [_table2_row(*row) for row in rows]
    first = rows[0][3][0]
    lines.append("")
    lines.append(f"Params: embedding network only (no fc7 classifier); *ours* = the network trained here, *full* = "
                 f"the same architecture at full size (512-d, 112x112) as `shrinkteanet.symbols` builds it, "
                 f"*paper* = Table 2. MFLOPs = convolution and FC multiply-adds per image. MegaFace rank-1 uses "
                 f"{first['megaface_distractors']} synthetic distractors and {first['megaface_probes']} probes; IJB-C "
                 f"TAR at FAR=1e-4 on the synthetic IJB-C tree (with few impostor pairs this FAR is reached only "
                 f"at the highest impostor score, so the column is coarse; TAR at every FAR is in each run's "
                 f"`eval/ijbc.json`).\n")
    return lines


def _table2_row(net, method, cells, per, stats_):
    params, flops = stats_
    pnet = "r90" if method == "teacher" else net
    prow = paper.paper_row(pnet, method)
    full_p, full_f = full_size_stats(pnet)
    pp = paper.NETWORKS.get(pnet, (None, None))[1]
    cols = [NET_NAMES.get(net, net), method_names()[method],
            f"{params / 1e6:.3f}M / {full_p / 1e6:.2f}M / {pp if pp is not None else '-'}M",
            f"{flops / 1e6:.2f} / {full_f / 1e6:.0f}"]
    for key, _ in PROTOCOLS:
        mean, std = cells[key]
        ref = prow.get(key)
        cols.append(_pct(mean, std) + (f" ({100 * ref:.2f})" if ref is not None else ""))
    return "| " + " | ".join(cols) + " |"


def _every_seed(rows, meta):
    lines = ["## Every seed\n", "| Network | Method | Seed | " + " | ".join(h for _, h in PROTOCOLS) + " |",
             "|---|---|---|" + "---|" * len(PROTOCOLS)]
    for net, method, _, per, _ in rows[1:]:
        runs = [r for r in meta["runs"] if r["network"] == net and r["method"] == method]
        for r, p in zip(runs, per):
            lines.append(f"| {NET_NAMES.get(net, net)} | {method_names()[method]} | {r['seed']} | "
                         + " | ".join(_pct(p[k]) for k, _ in PROTOCOLS) + " |")
    return lines + [""]


def _setup(meta):
    s = meta["schedule"]
    head = meta.get("head") or "loss=arcface"
    lines = ["## Set-up\n",
             f"- data: `shrinkteanet data synth` with {json.dumps(meta['synth'])}, {meta['image_size']}x"
             f"{meta['image_size']}",
             f"- margin head of every network: `{head}` (the same for the teacher and all three methods)",
             f"- teacher: `teacher_r90` config (LResNet-E-IR) with net_opts {meta['teacher']['opts']}, "
             f"{meta['emb_size']}-d, {s['teacher_epochs']} epochs"]
    for net, o in meta["student_opts"].items():
        lines.append(f"- student {net}: net_opts {o}, {meta['emb_size']}-d, {s['student_epochs']} epochs")
    for m in meta["methods"]:
        extra = " ".join(meta.get("method_overrides", {}).get(m, []))
        lines.append(f"- method `{m}` ({method_names().get(m, m)}): config `<network>_{_config_suffix(m)}`"
                     + (f" with `{extra}`" if extra else ""))
    lines.append(f"- schedule: batch {s['batch_size']}, lr {s['lr']} (momentum 0.9, step decay x0.1 at 60% and "
                 f"85% of the epochs), the same seeds, data order and schedule for every method; "
                 f"{meta.get('jobs', 1)} stage(s) side by side, {meta.get('threads', 1)} OpenMP thread(s) each")
    return lines + [""]


def _stages(meta):
    lines = ["## Stages\n", "| stage | seconds |", "|---|---|"]
    for st in meta["stages"]:
        took = "skipped (up to date)" if st["skipped"] else f"{st['seconds']:.1f}"
        lines.append(f"| {st['name']} | {took} |")
    return lines + [""]


def _study_sections(out, meta):
    """The sections that judge the methods (``study_report``); also writes ``out/study.json``."""
    sr = study_report
    names = method_names()
    study = sr.build_study(out, meta, os.path.join(out, "synth"))
    sr.write_study_json(out, study)
    curves = sr.loss_curve_plot(out, study, names)
    return ["## Paired differences to the self-studied student\n", sr.paired_section(study, names, NET_NAMES),
            "## Distillation weight ablation\n", sr.ablation_section(study, weight_ablation(), names),
            "## Student-teacher cosine per stage at the end of training\n", sr.cosine_section(study, names),
            "## Loss at the final learning rate (secondary)\n", sr.convergence_section(study, names)
            + (f"\n![loss curves]({curves})\n" if curves else ""),
            "## Standard errors of the protocols\n", sr.se_section(study)]


def write_report(out, meta):
    """Render and write ``out/REPORT.md`` atomically; returns its path."""
    text = render(out, meta)
    path = os.path.join(out, "REPORT.md")
    atomic_write_bytes(path, text.encode())
    return path
