"""Sphinx configuration of the shrinkteanet documentation (``make docs``).

The API pages are generated from the docstrings (autosummary with ``:recursive:``), so they follow the
package as its sub-packages change; the guides are MyST Markdown.  The build runs with ``-W --keep-going``:
any warning fails it (``make docs`` and ``tests/test_docs.py``).
"""
import importlib.util
import os
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

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
]
# Equations: MathJax, which the browser loads from its CDN; offline the pages show the TeX source instead.

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
exclude_patterns = ["_build", "results/**", "examples/**"]  # results: study outputs, linked from reproduction.md
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
# autosummary writes a stub per module into _api/ and never removes one: a module that was renamed or moved
# would leave a stub that fails the -W build, so the stubs are written anew on every build
shutil.rmtree(HERE / "_api", ignore_errors=True)
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
    e.g. ``lowres_ktkd`` in ``shrinkteanet.methods.base.assembler``): the first column is widened to its longest
    cell.  Only the rendering changes; the docstring is fixed at its source after the regrouping."""
    for first, last in list(_table_blocks(lines)):
        _widen_block(lines, first, last)
    return lines


def _indent(line):
    return len(line) - len(line.lstrip())


def _is_markup(line):
    text = line.lstrip()
    return text.startswith((":", "..", "* ", "- ", "| ", ">>>")) or _is_border(line)


def _block_end(lines, start, base):
    end = start
    while end < len(lines) and lines[end].strip() and _indent(lines[end]) > base:
        end += 1
    return end


def close_indented_blocks(lines):
    """Plain-text layouts that docutils rejects, rendered instead of failing the build: an indented block right
    after a paragraph of several lines ("Unexpected indentation") becomes a literal block (the paragraph's
    closing ``:`` becomes ``::``), and an indented block followed at once by unindented text ("ends without a
    blank line") gets the blank line.  Valid reST (definition lists, fields, lists) is left as it is."""
    i = 1
    while i < len(lines):
        prev, line = lines[i - 1], lines[i]
        if line.strip() and prev.strip() and _indent(line) > _indent(prev) and not _is_markup(prev):
            base = _indent(prev)
            paragraph = i >= 2 and lines[i - 2].strip() and _indent(lines[i - 2]) == base
            end = _block_end(lines, i, base)
            if end < len(lines) and lines[end].strip():
                lines.insert(end, "")
            if paragraph:
                lines[i - 1] = prev.rstrip() + (":" if prev.rstrip().endswith(":") else "::")
                lines.insert(i, "")
            i = end + 1
        i += 1
    return lines


#: the docutils complaints the repairs above answer; any other message is left to fail the build
_LAYOUT_MESSAGES = ("Malformed table", "Unexpected indentation", "ends without a blank line")


def _layout_problems(lines):
    """True when plain docutils reports one of ``_LAYOUT_MESSAGES`` for this docstring."""
    from docutils.core import publish_doctree
    from docutils.utils import SystemMessage

    # Sphinx's roles need a build environment that a bare docutils parse has not: read them as literals
    text = re.sub(r":[\w.:+-]+:`([^`]*)`", r"``\1``", "\n".join(lines))
    settings = {"report_level": 5, "halt_level": 5, "warning_stream": False}
    try:
        tree = publish_doctree(text, settings_overrides=settings)
    except SystemMessage:
        return True
    except Exception:  # noqa: BLE001 - a Sphinx-only directive: leave the docstring to Sphinx as written
        return False
    problems = [msg.astext() for msg in tree.findall(lambda n: n.tagname == "system_message")]
    return any(m in p for p in problems for m in _LAYOUT_MESSAGES)


def _repair_docstring(app, what, name, obj, options, lines):
    """Repair only docstrings whose layout docutils rejects; every other docstring is rendered as written."""
    if not _layout_problems(lines):
        return
    widen_simple_tables(lines)
    if _layout_problems(lines):
        close_indented_blocks(lines)


def _load_tables_extension():
    """``_ext/scaling_tables.py`` (the tables computed at build time), loaded by path: no ``sys.path`` edit."""
    spec = importlib.util.spec_from_file_location("scaling_tables", HERE / "_ext" / "scaling_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(app):
    app.connect("autodoc-process-docstring", _repair_docstring)
    return _load_tables_extension().setup(app)
