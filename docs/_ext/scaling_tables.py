"""Tables of the docs computed from the code, never typed by hand, and committed into the Markdown.

* ``scaling-networks``: per recipe network (112x112, emb 512, the recipes' configs) the parameters, the
  multiply-adds of one forward pass and of one training step (``shrinkteanet.symbols.measure.count_params`` /
  ``layer_macs``), the activation memory of one GPU at its batch (MXNet's shape inference over the symbol's
  internal outputs), samples/s per GPU interpolated from two published anchors, and hours on MS1M.
* ``scaling-methods``: the same per training step of each recipe student and method, counting what the method
  runs besides the student: the teacher's forward pass, and for ``stn``/``l2`` with stages 1-3 the teacher's
  tails after each stage, forward and backward (the gradient flows through the frozen tails to the student).
* ``scaling-cache``: the teacher-cache size on disk (``shrinkteanet.training.teacher_cache``'s layout).
* ``paper-results``: the paper's reported numbers (``shrinkteanet.study.paper``) beside the recipe of each row.

The tables live in the Markdown pages themselves between ``<!-- BEGIN name ... -->`` and ``<!-- END name -->``
(so that GitHub shows them): ``python docs/_ext/scaling_tables.py --write`` rewrites them, ``--check`` exits 1
when a page differs from what the code gives, and the Sphinx build (``setup``) warns then (``-W``: fails).
"""
import functools
import math
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
#: page (relative to docs/) -> the tables written into it
PAGES = {"guides/scaling.md": ("scaling-networks", "scaling-methods", "scaling-cache"),
         "guides/reproduce.md": ("paper-results",)}
#: recipe network -> the config its recipe trains (recipes/*.sh)
RECIPE_CONFIGS = {"r90": "teacher_r90", "r100": "teacher_r100", "mfn": "mfn_self", "mfnr": "mfnr_self",
                  "mv1": "mv1_self", "mv2": "mv2_self"}
#: the students and method configs of the recipes (recipes/<student>_<suffix>.sh)
STUDENTS, METHOD_SUFFIXES = ("mfn", "mfnr", "mv1", "mv2"), ("self", "l2", "stn", "stn_final")
#: methods whose stage terms (``methods.base.terms.StageTerms``, not on taps) run the teacher's tails
TAIL_METHODS = ("stn", "l2")
#: InsightFace arcface_torch training logs (8 GPUs, fp16): samples/s per GPU
ANCHORS = {"mfn": 1390.0, "r100": 424.0}
MS1M_IMAGES = 5_800_000
#: per-GPU batch: the paper's 512 over 4 GPUs (Sec. 4.2), InsightFace's per_batch_size 128
BATCH_PER_GPU = 128
#: bytes per activation element in float32; a trained part keeps every forward output for the backward pass,
#: and a gradient of the same size exists while it runs (x 2); the teacher's own forward is not differentiated
ACT_BYTES, BACKWARD_FACTOR = 4, 2
#: a training step of weights costs forward + 2 x forward (gradients to the inputs and to the weights); the
#: frozen tails compute only the gradient to their input: forward + 1 x forward
TRAIN_FACTOR, FROZEN_FACTOR = 3, 2
GPU_COUNTS = (4, 8)
#: the teacher the recipes train and distil from (``recipes/_common.sh``: TEACHER_NET defaults to r90); the
#: method configs leave ``teacher_network`` empty (read from the checkpoint), so the tables assume this one
RECIPE_TEACHER = ("r90", 512)
GIB = 2 ** 30


def _config(name):
    from shrinkteanet.training import config

    return config.config_by_name(name, [])


@functools.lru_cache(maxsize=None)
def network_cost(network, emb_size, image_size=112):
    """Forward multiply-adds per image of ``network`` (the whole net, each tail, the stage shapes) and the
    activation elements per image of the net and of each tail (every internal output but the inputs)."""
    from shrinkteanet import symbols

    split = symbols.get_stages(network, emb_size=emb_size)
    shapes = split.stage_shapes(image_size)
    full = _cost(split.full, data=(1, 3, image_size, image_size))
    tails = [_cost(t, **{name: (1, *shape)}) for t, name, shape in zip(split.tails, split.tail_inputs, shapes)]
    return dict(macs=full[0], act=full[1], tail_macs=[t[0] for t in tails], tail_act=[t[1] for t in tails],
                stage_shapes=shapes)


def _cost(sym, **shapes):
    from shrinkteanet.symbols import measure

    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(**shapes)
    inputs = set(sym.list_arguments()) | set(sym.list_auxiliary_states())
    act = sum(math.prod(s) for name, s in zip(internals.list_outputs(), out_shapes) if name not in inputs)
    return sum(measure.layer_macs(sym, **shapes).values()), act


def step_cost(cfg):
    """Multiply-adds per image of one training step of ``cfg`` and its activation elements per image, by part:
    the student (and its classifier ``fc7`` and adapters H_i) trained; the teacher's forward; the tails."""
    from shrinkteanet.methods.base.registry import needs_teacher

    student = network_cost(cfg.network, cfg.emb_size)
    fc7 = cfg.emb_size * cfg.num_classes
    plain = TRAIN_FACTOR * (student["macs"] + fc7)  # a step of the student trained on its own
    cost = dict(student=plain, teacher=0, tails=0, plain=plain, student_macs=student["macs"],
                act=BACKWARD_FACTOR * (student["act"] + cfg.num_classes))
    if not needs_teacher(cfg):
        return cost
    teacher = network_cost(*recipe_teacher(cfg))
    cost.update(teacher=teacher["macs"], act=cost["act"] + teacher["act"], teacher_macs=teacher["macs"])
    if cfg.distill in TAIL_METHODS:
        for stage in (int(s) for s in cfg.distill_stages if int(s) < 4):
            (cs, h, w), (ct, _, _) = student["stage_shapes"][stage - 1], teacher["stage_shapes"][stage - 1]
            cost["student"] += TRAIN_FACTOR * h * w * cs * ct  # the adapter H_i, a 1x1 conv
            cost["tails"] += FROZEN_FACTOR * teacher["tail_macs"][stage - 1]
            cost["act"] += BACKWARD_FACTOR * (ct * h * w + teacher["tail_act"][stage - 1])
    return cost


def recipe_teacher(cfg):
    """(network, embedding size) of the teacher ``cfg`` distils from: its own when set, else the recipes'."""
    return cfg.teacher_network or RECIPE_TEACHER[0], cfg.teacher_emb_size or RECIPE_TEACHER[1]


def samples_per_s(network_macs):
    """Per-GPU training rate on the power law through the two anchors (rate = a * MACs^-k), an estimate."""
    (f1, r1), (f2, r2) = [(network_cost(n, 512)["macs"], ANCHORS[n]) for n in sorted(ANCHORS)]
    k = math.log(r1 / r2) / math.log(f2 / f1)
    return r1 * (f1 / network_macs) ** k


def step_seconds(cost):
    """Seconds per image of a step: the student's share at its own training rate (which includes its
    classifier, as the anchors' do), the teacher's forward and tails as the fraction of a teacher training
    step (3 x its forward) they are, at the teacher's rate."""
    own = cost["student"] / cost["plain"] / samples_per_s(cost["student_macs"])
    if not cost["teacher"]:
        return own
    t = cost["teacher_macs"]
    return own + (cost["teacher"] + cost["tails"]) / (TRAIN_FACTOR * t) / samples_per_s(t)


def schedule_batches(cfg):
    """Length of the config's run in global batches (``training.schedule.total_batches`` on MS1M)."""
    from shrinkteanet.training.schedule import total_batches

    return total_batches(cfg, MS1M_IMAGES // cfg.batch_size)


def _hours(cfg, seconds):
    batches = schedule_batches(cfg)
    return batches, {g: batches * cfg.batch_size * seconds / g / 3600 for g in GPU_COUNTS}


def network_rows():
    """One dict per recipe network trained on its own (a teacher, a self-studied student)."""
    from shrinkteanet import symbols
    from shrinkteanet.symbols import measure

    rows = []
    for network, name in RECIPE_CONFIGS.items():
        cfg = _config(name)
        emb_params, _ = measure.count_params(symbols.get_symbol(cfg.network, emb_size=cfg.emb_size), cfg.image_size)
        cost = step_cost(cfg)
        batches, hours = _hours(cfg, step_seconds(cost))
        rows.append(dict(network=network, config=name, params=emb_params, forward=cost["student_macs"],
                         step=cost["student"], act_bytes=cost["act"] * BATCH_PER_GPU * ACT_BYTES,
                         rate=samples_per_s(cost["student_macs"]), batches=batches,
                         epochs=batches * cfg.batch_size / MS1M_IMAGES, hours=hours))
    return rows


def method_rows():
    """One dict per recipe student and method: the step's parts, its ratio to an r100 training step."""
    r100 = step_cost(_config("teacher_r100"))["student"]
    rows = []
    for student in STUDENTS:
        for suffix in METHOD_SUFFIXES:
            cfg = _config(f"{student}_{suffix}")
            cost = step_cost(cfg)
            total = cost["student"] + cost["teacher"] + cost["tails"]
            _, hours = _hours(cfg, step_seconds(cost))
            rows.append(dict(config=f"{student}_{suffix}", teacher=recipe_teacher(cfg)[0] if cost["teacher"] else "-",
                             stages=",".join(str(s) for s in cfg.distill_stages) if cost["teacher"] else "-",
                             cost=cost, total=total, x_r100=total / r100,
                             act_bytes=cost["act"] * BATCH_PER_GPU * ACT_BYTES, hours=hours))
    return rows


def cache_bytes(num_images, emb_size):
    """``emb.f16`` (float16, image and mirror) + ``keys.npy`` (int64) of ``TeacherCache``."""
    return num_images * 2 * emb_size * 2 + num_images * 8


def _gib(n_bytes):
    return f"{n_bytes / GIB:.1f} / {n_bytes / 2 / GIB:.1f}"


def _fmt_network_rows():
    header = ["network", "recipe config", "parameters (M)", "forward (G mult-adds / image)",
              "training step (G mult-adds / image)", f"activations at {BATCH_PER_GPU} / GPU, fp32 / fp16 (GiB)",
              "samples/s per GPU (est., fp16)", "schedule (batches / epochs)"]
    header += [f"hours on {g} GPUs (est.)" for g in GPU_COUNTS]
    body = []
    for r in network_rows():
        anchor = " (anchor)" if r["network"] in ANCHORS else ""
        body.append([r["network"], r["config"], f"{r['params'] / 1e6:.2f}", f"{r['forward'] / 1e9:.3f}",
                     f"{r['step'] / 1e9:.2f}", _gib(r["act_bytes"]), f"{r['rate']:,.0f}{anchor}",
                     f"{r['batches']:,} / {r['epochs']:.1f}"] + [f"{r['hours'][g]:.1f}" for g in GPU_COUNTS])
    return header, body


def _fmt_method_rows():
    header = ["config", "teacher", "stages", "student + fc7 + adapters, fwd + bwd", "teacher forward",
              "teacher tails, fwd + bwd", "step total", "x an r100 step",
              f"activations at {BATCH_PER_GPU} / GPU, fp32 / fp16 (GiB)"]
    header = header[:3] + [f"{h} (G mult-adds / image)" if i < 4 else h for i, h in enumerate(header[3:])]
    header += [f"hours on {g} GPUs (est.)" for g in GPU_COUNTS]
    body = []
    for r in method_rows():
        c = r["cost"]
        body.append([r["config"], r["teacher"], r["stages"]] + [f"{v / 1e9:.2f}" for v in
                                                                (c["student"], c["teacher"], c["tails"], r["total"])]
                    + [f"{r['x_r100']:.2f}", _gib(r["act_bytes"])] + [f"{r['hours'][g]:.1f}" for g in GPU_COUNTS])
    return header, body


def _fmt_cache_rows():
    header = ["training set", "images", "teacher emb", "cache on disk (GiB)"]
    body = [[name, f"{n:,}", str(d), f"{cache_bytes(n, d) / 2**30:.2f}"]
            for name, n, d in (("MS1M (faces_emore)", MS1M_IMAGES, 512), ("MS1M, 128-d teacher", MS1M_IMAGES, 128))]
    return header, body


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def _fmt_paper_rows():
    from shrinkteanet.study import paper

    header = ["network", "method", "recipe", "params (M)", "LFW", "CFP-FP", "AgeDB-30", "MegaFace rank-1",
              "IJB-C TAR@1e-4"]
    body = []
    for (net, method), res in paper.RESULTS.items():
        recipe = f"teacher_{net}.sh" if method == "teacher" else f"{net}_{method}.sh"
        body.append([paper.NETWORKS[net][0], paper.paper_methods()[method], f"recipes/{recipe}",
                     f"{paper.NETWORKS[net][1]:.2f}"] + [_pct(res.get(k)) for k in
                                                       ("lfw", "cfp_fp", "agedb_30", "megaface", "ijbc")])
    return header, body


TABLES = {"scaling-networks": _fmt_network_rows, "scaling-methods": _fmt_method_rows,
          "scaling-cache": _fmt_cache_rows, "paper-results": _fmt_paper_rows}


def markdown_table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _block(name):
    return re.compile(rf"(<!-- BEGIN {re.escape(name)}\b[^\n]*-->\n)(.*?)(<!-- END {re.escape(name)} -->)", re.S)


def regenerate(text, names, tables=None):
    """``text`` with each named table rewritten between its markers (``tables``: name -> Markdown, computed
    when not given).  A page without the markers of one of ``names`` is an error: the table would vanish."""
    for name in names:
        table = (tables or {}).get(name) or markdown_table(*TABLES[name]())
        text, n = _block(name).subn(lambda m: m.group(1) + "\n" + table + "\n\n" + m.group(3), text)
        if n != 1:
            raise ValueError(f"{name}: expected one <!-- BEGIN {name} --> ... <!-- END {name} --> block, found {n}")
    return text


def stale_pages(docs=DOCS):
    """The pages of ``PAGES`` whose committed tables differ from what the code gives now."""
    tables = {name: markdown_table(*TABLES[name]()) for names in PAGES.values() for name in names}
    stale = []
    for page, names in PAGES.items():
        text = (docs / page).read_text(encoding="utf-8")
        if regenerate(text, names, tables) != text:
            stale.append(page)
    return stale


def write_pages(docs=DOCS):
    """Rewrite every table of ``PAGES`` in place; returns the pages that changed."""
    changed = stale_pages(docs)
    for page in changed:
        path = docs / page
        path.write_text(regenerate(path.read_text(encoding="utf-8"), PAGES[page]), encoding="utf-8")
    return changed


def _check_at_build(app):
    from sphinx.util import logging

    for page in stale_pages():
        logging.getLogger(__name__).warning(
            f"docs/{page}: its generated tables differ from the code; run python docs/_ext/scaling_tables.py --write")


def setup(app):
    """Sphinx: the tables are plain Markdown in the pages; the build only checks that they are current."""
    app.connect("builder-inited", _check_at_build)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv):
    if "--write" in argv:
        print("\n".join(f"rewrote docs/{p}" for p in write_pages()) or "all tables current")
        return 0
    if "--check" in argv:
        stale = stale_pages()
        print("\n".join(f"docs/{p}: stale (--write)" for p in stale) or "all tables current")
        return 1 if stale else 0
    for name, make_rows in TABLES.items():
        print(f"## {name}\n\n{markdown_table(*make_rows())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
