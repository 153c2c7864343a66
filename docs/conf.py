"""Sphinx configuration of the shrinkteanet documentation (``make docs``).

The API pages are generated from the docstrings (autosummary with ``:recursive:``), so they follow the
package as its sub-packages change; the guides are MyST Markdown.  The build runs with ``-W --keep-going``:
any warning fails it (``make docs`` and ``tests/test_docs.py``).
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # the docs' own extension (scaling tables); not the package

project = "shrinkteanet"
author = "shrinkteanet authors"
copyright = "2026, shrinkteanet authors"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "scaling_tables",
]

# intersphinx to MXNet / NumPy is left out on purpose: the build must run offline (CI and this machine have
# no network), and intersphinx with unreachable inventories prints a warning per inventory, which -W turns
# into a failure.  Set SHRINKTEANET_DOCS_INTERSPHINX=1 where the network is reachable to link them.
if os.environ.get("SHRINKTEANET_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "numpy": ("https://numpy.org/doc/1.23/", None),
        "mxnet": ("https://mxnet.apache.org/versions/1.9.1/api/python/docs/", None),
    }

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "results/*.json"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = "shrinkteanet"
html_static_path = []



def _is_border(line):
    text = line.strip()
    return bool(text) and set(text) <= {"=", " "} and len(text.split()) > 1


def _table_blocks(lines):
    """(first, last) line index of each simple table: from a border to the border before a blank line."""
    i = 0
    while i < len(lines):
        if _is_border(lines[i]):
            j = i + 1
            while j < len(lines) and not (_is_border(lines[j]) and (j + 1 == len(lines) or not lines[j + 1].strip())):
                j += 1
            yield i, min(j, len(lines) - 1)
            i = j
        i += 1


def _widen_block(lines, first, last):
    border = lines[first]
    indent = len(border) - len(border.lstrip())
    runs = border.split()
    col = len(runs[0])
    gap = border.index(runs[1], indent + col) - indent - col
    rows = [ln[indent:] for ln in lines[first:last + 1] if not _is_border(ln)]
    width = max([col] + [len(r.split()[0]) for r in rows if r[:1] not in ("", " ")])
    if width == col:
        return
    for k in range(first, last + 1):
        ln = lines[k]
        if _is_border(ln):
            lines[k] = ln[:indent + col] + "=" * (width - col) + ln[indent + col:]
            continue
        head = ln[indent:].split()[0] if ln[indent:indent + 1] not in ("", " ") else ""
        if len(head) <= col:
            lines[k] = ln[:indent + col] + " " * (width - col) + ln[indent + col:] if len(ln) > indent + col else ln
        else:
            rest = ln[indent + len(head):].lstrip(" ")
            lines[k] = " " * indent + head.ljust(width + gap) + rest


def widen_simple_tables(lines):
    """Repair simple tables whose first-column text runs into the column gap (docutils' "Malformed table",
    e.g. ``lowres_ktkd`` in ``shrinkteanet.methods.distill``): the first column is widened to its longest
    cell.  Only the rendering changes; the docstring is fixed at its source after the regrouping."""
    for first, last in list(_table_blocks(lines)):
        _widen_block(lines, first, last)
    return lines


def _repair_docstring(app, what, name, obj, options, lines):
    widen_simple_tables(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _repair_docstring)
