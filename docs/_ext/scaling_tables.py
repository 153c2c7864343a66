"""Tables of the docs computed from the code at build time, never typed by hand.

* ``scaling-networks``: per recipe network (112x112, emb 512, the recipes' configs) the parameters and
  multiply-adds (``shrinkteanet.symbols.count_params`` / ``count_flops``), the activation memory of one GPU
  at batch 128 (from MXNet's shape inference over the symbol's internal outputs), samples/s per GPU
  interpolated from two published anchors, and hours for the configs' schedule on MS1M.
* ``scaling-cache``: the teacher-cache size on disk (``shrinkteanet.training.teacher_cache``'s layout).
* ``paper-results``: the paper's reported numbers (``shrinkteanet.study.paper``) beside the recipe of each row.

Run as a script (``python docs/_ext/scaling_tables.py``) it prints the same tables as Markdown.
"""
import math

from docutils import nodes
from docutils.parsers.rst import Directive

#: recipe network -> the config its recipe trains (recipes/*.sh)
RECIPE_CONFIGS = {"r90": "teacher_r90", "r100": "teacher_r100", "mfn": "mfn_stn", "mfnr": "mfnr_stn",
                  "mv1": "mv1_stn", "mv2": "mv2_stn"}
#: InsightFace arcface_torch training logs (8 GPUs, fp16): samples/s per GPU
ANCHORS = {"mfn": 1390.0, "r100": 424.0}
MS1M_IMAGES = 5_800_000
BATCH_PER_GPU = 128
#: bytes per activation element (float32) and the factor for the backward pass: every forward output is kept
#: for the backward pass and a gradient of the same size exists while it runs
ACT_BYTES, BACKWARD_FACTOR = 4, 2
GPU_COUNTS = (4, 8)


def _config(network):
    from shrinkteanet.training import config

    return config.config_by_name(RECIPE_CONFIGS[network], [])


def _symbol(cfg):
    from shrinkteanet import symbols

    return symbols.get_symbol(cfg.network, emb_size=cfg.emb_size, **dict(cfg.net_opts))


def activation_bytes(sym, image_size, batch):
    """Sum of the sizes of every internal output of ``sym`` (not its arguments or auxiliary states) at
    ``batch`` images, in bytes of float32, times ``BACKWARD_FACTOR``.  MXNet's memory planner reuses and
    shares buffers (in-place BatchNorm/activations), so the real peak is lower: an upper estimate."""
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=(batch, 3, image_size, image_size))
    inputs = set(sym.list_arguments()) | set(sym.list_auxiliary_states())
    total = sum(math.prod(shape) for name, shape in zip(internals.list_outputs(), out_shapes)
                if name not in inputs)
    return total * ACT_BYTES * BACKWARD_FACTOR


def flops(network):
    from shrinkteanet import symbols

    cfg = _config(network)
    return symbols.count_flops(_symbol(cfg), cfg.image_size)


def samples_per_s(network_flops, anchor_flops):
    """Per-GPU rate on the power law through the two anchors (rate = a * FLOPs^-k), an estimate."""
    (f1, r1), (f2, r2) = [(anchor_flops[n], ANCHORS[n]) for n in sorted(ANCHORS)]
    k = math.log(r1 / r2) / math.log(f2 / f1)
    return r1 * (f1 / network_flops) ** k


def schedule_batches(cfg):
    """Length of the config's run in global batches (``training.train.total_batches`` on MS1M)."""
    from shrinkteanet.training.train import total_batches

    return total_batches(cfg, MS1M_IMAGES // cfg.batch_size)


def network_rows():
    """One dict per recipe network: the scaling guide's numbers."""
    from shrinkteanet import symbols

    anchor_flops = {n: flops(n) for n in ANCHORS}
    rows = []
    for network in RECIPE_CONFIGS:
        cfg = _config(network)
        sym = _symbol(cfg)
        emb_params, _ = symbols.count_params(sym, cfg.image_size)
        f = symbols.count_flops(sym, cfg.image_size)
        rate = samples_per_s(f, anchor_flops)
        batches = schedule_batches(cfg)
        row = dict(network=network, config=RECIPE_CONFIGS[network], params=emb_params, flops=f,
                   act_bytes=activation_bytes(sym, cfg.image_size, BATCH_PER_GPU), rate=rate,
                   batches=batches, epochs=batches * cfg.batch_size / MS1M_IMAGES)
        for g in GPU_COUNTS:
            row[f"hours_{g}"] = batches * cfg.batch_size / (rate * g) / 3600
        rows.append(row)
    return rows


def cache_bytes(num_images, emb_size):
    """``emb.f16`` (float16, image and mirror) + ``keys.npy`` (int64) of ``TeacherCache``."""
    return num_images * 2 * emb_size * 2 + num_images * 8


def _fmt_network_rows():
    header = ["network", "recipe config", "parameters (M)", "GFLOPs (mult-adds)",
              f"activations, batch {BATCH_PER_GPU} (GiB)", "samples/s per GPU (est.)", "schedule (batches / epochs)"]
    header += [f"hours on {g} GPUs (est.)" for g in GPU_COUNTS]
    body = []
    for r in network_rows():
        anchor = " (anchor)" if r["network"] in ANCHORS else ""
        body.append([r["network"], r["config"], f"{r['params'] / 1e6:.2f}", f"{r['flops'] / 1e9:.3f}",
                     f"{r['act_bytes'] / 2**30:.1f}", f"{r['rate']:,.0f}{anchor}",
                     f"{r['batches']:,} / {r['epochs']:.1f}"] + [f"{r[f'hours_{g}']:.1f}" for g in GPU_COUNTS])
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
        body.append([paper.NETWORKS[net][0], paper.METHODS[method], f"recipes/{recipe}",
                     f"{paper.NETWORKS[net][1]:.2f}"] + [_pct(res.get(k)) for k in
                                                       ("lfw", "cfp_fp", "agedb_30", "megaface", "ijbc")])
    return header, body


TABLES = {"scaling-networks": _fmt_network_rows, "scaling-cache": _fmt_cache_rows, "paper-results": _fmt_paper_rows}


def _table(header, body):
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    group += [nodes.colspec(colwidth=1) for _ in header]
    thead, tbody = nodes.thead(), nodes.tbody()
    group += [thead, tbody]
    for target, rows in ((thead, [header]), (tbody, body)):
        for cells in rows:
            row = nodes.row()
            row += [nodes.entry("", nodes.paragraph(text=c)) for c in cells]
            target += row
    return table


def _directive(make_rows):
    class GeneratedTable(Directive):
        has_content = False

        def run(self):
            return [_table(*make_rows())]

    return GeneratedTable


def setup(app):
    for name, make_rows in TABLES.items():
        app.add_directive(name, _directive(make_rows))
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _markdown(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


if __name__ == "__main__":
    for name, make_rows in TABLES.items():
        print(f"## {name}\n\n{_markdown(*make_rows())}\n")
