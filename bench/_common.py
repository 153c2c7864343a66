"""Shared by the bench scripts (run as `python bench/<name>.py`, so this module
imports as `_common`): the machine-load reading and the marked-section writer
of docs/benchmarks.md."""
import os
import re

from shrinkteanet.core.utils import atomic_open

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")


def loadavg():
    """1-minute load average: every table records how shared the machine was."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def write_marked_section(name, text, doc=DOC):
    """Replace (or append) the block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
    in docs/benchmarks.md, atomically, leaving every other section as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = open(doc, encoding="utf-8").read() if os.path.isfile(doc) else "# Benchmarks\n"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    if start in old and end in old:
        new = re.sub(re.escape(start) + r".*?" + re.escape(end) + r"\n?", lambda m: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block
    with atomic_open(doc, "w") as f:
        f.write(new)
    return doc
