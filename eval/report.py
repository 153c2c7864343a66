"""One output folder per evaluation: ``<name>.json`` (CONTRACTS fields, unrounded),
``<name>.md`` (a table a person reads) and PNG plots, all written atomically."""
import io
import os

import numpy as np

from shrinkteanet.core.utils import atomic_write_bytes, write_json


def md_table(headers, rows):
    """GitHub Markdown table; floats in 0..1 shown as percentages with 2 decimals."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{100 * v:.2f}" if 0.0 <= v <= 1.0 else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def model_source(model):
    """What an evaluation report says it came from (issue 21: a derived file names its source by
    content): ``{"prefix", "epoch", "symbol_sha1", "params_sha1"}`` of the ``PREFIX,EPOCH``
    checkpoint (``model.checkpoint.checkpoint_fingerprint``)."""
    from shrinkteanet.core.utils import parse_model_arg
    from shrinkteanet.model.checkpoint import checkpoint_fingerprint

    prefix, epoch = parse_model_arg(model) if isinstance(model, str) else model
    return {"prefix": prefix, "epoch": int(epoch), **checkpoint_fingerprint(prefix, epoch)}


def model_note(source):
    """The report line naming the model (``model_source``)."""
    return (f"model: {source['prefix']},{source['epoch']} (symbol sha1 {source['symbol_sha1']}, "
            f"params sha1 {source['params_sha1']})")


def write_report(out_dir, name, fields, title, sections, notes=()):
    """``fields`` -> ``out_dir/name.json``; ``sections`` = [(heading, markdown)] -> ``name.md``."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, f"{name}.json"), fields)
    parts = [f"# {title}\n"]
    for head, body in sections:
        parts.append(f"## {head}\n\n{body}")
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes) + "\n")
    atomic_write_bytes(os.path.join(out_dir, f"{name}.md"), "\n".join(parts).encode())
    return os.path.join(out_dir, f"{name}.md")


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(path, curves, xlabel, ylabel, title, logx=False, xlim=None, ylim=None):
    """``curves``: {label: (x, y)} -> one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, (x, y) in curves.items():
        x, y = np.asarray(x, float), np.asarray(y, float)
        if logx:
            keep = x > 0
            x, y = x[keep], y[keep]
        ax.plot(x, y, lw=1.5, label=label, marker="o" if len(x) <= 20 else None, ms=3)
    if logx:
        ax.set_xscale("log")
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(linestyle="--", linewidth=0.5)
    ax.legend(loc="lower right")
    _save(fig, path)
    plt.close(fig)
    return path
