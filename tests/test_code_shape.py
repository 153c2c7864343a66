"""The shape of the code (issue 14), read from the source with ``ast``, nothing imported:

* no function of ``src/``, ``symbols/``, ``eval/`` is longer than 60 lines (a data table may be,
  when it is named in ``DATA_TABLES`` with the reason);
* every sub-package of ``src/`` says in its ``__init__.py`` docstring what it holds;
* no module imports "upwards" against the stage order of the package (function-level lazy
  imports included): core < data < symbols < model < methods < eval < training < deploy <
  study < cli;
* no module-level ``__getattr__`` outside the contract shims, no two modules named alike across
  sub-packages, and every import between sub-packages one that docs/design.md's table allows (issue 25).
"""
import ast
import functools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: source folder -> its name in the ``shrinkteanet`` namespace (setup.py ``package_dir``)
TREES = {"src": "shrinkteanet", "symbols": "shrinkteanet.symbols", "eval": "shrinkteanet.eval"}
MAX_LINES = 60
#: "path/of/module.py::function" -> why its body may be long.  Only functions whose body is
#: essentially a literal table (constants, layer lists) belong here; logic is split instead.
DATA_TABLES = {}
ORDER = ("core", "data", "symbols", "model", "methods", "eval", "training", "deploy", "study", "cli")
#: top-level modules of ``src/`` that stand for a stage: ``shrinkteanet.losses`` is the contract
#: name of ``methods.base.blocks``; ``__init__``/``__main__`` are the package's entry (above ``cli``)
TOP_LEVEL = {"losses": "methods", "__init__": None, "__main__": None}


def _modules():
    """(path relative to the repo, dotted module name, parsed tree) of every Python file."""
    out = []
    for tree, package in TREES.items():
        for d, dirs, files in os.walk(os.path.join(ROOT, tree)):
            dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")) and not x.endswith(".egg-info"))
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)
                parts = os.path.relpath(path, os.path.join(ROOT, tree))[:-3].split(os.sep)
                name = ".".join([package] + parts)
                with open(path, encoding="utf-8") as fh:
                    out.append((rel, name, ast.parse(fh.read(), rel)))
    return out


MODULES = _modules()


def _stage(module):
    """Stage index of a dotted ``shrinkteanet`` module name; None above every stage (the
    package entry) or outside the package."""
    parts = module.split(".")
    if parts[0] != "shrinkteanet":
        return None
    if len(parts) == 1:
        return None
    head = parts[1]
    if head in ORDER:
        return ORDER.index(head)
    top = TOP_LEVEL.get(head)
    return ORDER.index(top) if top else None


def _imported(name, tree):
    """(line, dotted module) of every import in a module, at any depth (lazy imports count);
    relative imports are resolved against ``name``."""
    is_pkg = name.endswith(".__init__")
    here = name[: -len(".__init__")] if is_pkg else name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from shrinkteanet import data``: the names may be sub-packages themselves
            yield node.lineno, mod
            for a in node.names:
                yield node.lineno, f"{mod}.{a.name}"


def long_functions():
    out = []
    for rel, _, tree in MODULES:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    out.append((f"{rel}::{node.name}", n))
    return out


@functools.lru_cache(maxsize=None)
def upward_imports():
    """One line per import statement that reaches a later stage."""
    return upward_imports_of(MODULES)


def stage_imports(modules):
    """(rel, line, own stage, imported stage, module) of every import between two stages of the
    given (rel, name, tree) modules (the package entry and outside modules left out)."""
    for rel, name, tree in modules:
        own = _stage(name)
        if own is None:
            continue
        for line, mod in _imported(name, tree):
            other = _stage(mod)
            if other is not None:
                yield rel, line, own, other, mod


def upward_imports_of(modules):
    """``upward_imports`` of the given (rel, name, tree) modules."""
    out = {}
    for rel, line, own, other, mod in stage_imports(modules):
        if other > own:
            out.setdefault((rel, line), f"{rel}:{line} ({ORDER[own]}) imports {mod} ({ORDER[other]})")
    return tuple(out[k] for k in sorted(out))


def test_the_scan_sees_the_package():
    names = {name for _, name, _ in MODULES}
    assert {"shrinkteanet.data.loader", "shrinkteanet.symbols.fresnet", "shrinkteanet.eval.verification",
            "shrinkteanet.cli.__init__"} <= names
    # the checks below can fail: a known upward import and a known long body are detected
    probe = ast.parse("def f():\n    from shrinkteanet.cli import main\n" + "    x = 1\n" * 70)
    assert any(m == "shrinkteanet.cli" for _, m in _imported("shrinkteanet.core.utils", probe))
    assert _stage("shrinkteanet.cli.main") > _stage("shrinkteanet.core.utils")
    rel = [(a, b) for a, b in _imported("shrinkteanet.data.__init__", ast.parse("from .loader import x"))]
    assert (1, "shrinkteanet.data.loader") in rel
    rel = [(a, b) for a, b in _imported("shrinkteanet.data.loader", ast.parse("from ..model import network"))]
    assert (1, "shrinkteanet.model.network") in rel


def test_no_function_over_60_lines():
    found = dict(long_functions())
    too_long = {k: v for k, v in found.items() if k not in DATA_TABLES}
    listed = ", ".join(f"{k} ({v} lines)" for k, v in sorted(too_long.items()))
    assert not too_long, f"split into named phases: {listed}"
    stale = set(DATA_TABLES) - set(found)
    assert not stale, f"no longer long (drop from DATA_TABLES): {sorted(stale)}"


def test_every_sub_package_says_what_it_holds():
    missing = []
    for d, dirs, files in os.walk(os.path.join(ROOT, "src")):
        dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__")) and not x.endswith(".egg-info")]
        if d == os.path.join(ROOT, "src") or "__init__.py" not in files:
            continue
        with open(os.path.join(d, "__init__.py"), encoding="utf-8") as fh:
            doc = ast.get_docstring(ast.parse(fh.read()))
        if not doc or not doc.strip():
            missing.append(os.path.relpath(d, ROOT))
    assert not missing, f"sub-packages without a module docstring: {missing}"


@pytest.mark.parametrize("stage", ORDER)
def test_no_import_against_the_stage_order(stage):
    bad = [b for b in upward_imports() if f" ({stage}) imports " in b]
    assert not bad, "\n".join(bad)


#: the only modules with a module-level ``__getattr__``: the lazy contract names of ../shared/CONTRACTS.md
#: (``shrinkteanet.symbols.get_symbol``/``get_stages`` and ``shrinkteanet.data.FaceRecordDataset``, which
#: load MXNet on first use)
CONTRACT_SHIMS = {"shrinkteanet.symbols.__init__", "shrinkteanet.data.__init__"}


def test_no_module_getattr_outside_the_contract_shims():
    found = {name for _, name, tree in MODULES for node in tree.body
             if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"}
    assert found == CONTRACT_SHIMS, f"values computed on attribute access: {sorted(found - CONTRACT_SHIMS)}"


#: module names that deliberately mirror one in another sub-package (each says so in its docstring)
MIRRORS = {"losses": "the contract shim shrinkteanet.losses mirrors methods.base.blocks",
           "registry": "the network registry (symbols) and the method registry (methods.base) mirror each other"}
#: the command modules are named after their command (the cli docstring says they mirror what they drive)
COMMANDS = "shrinkteanet.cli"


def test_no_two_modules_share_a_name_across_sub_packages():
    """One name, one module: a reader who meets ``images`` or ``report`` knows which is meant (issue 25)."""
    homes = {}
    for _, name, _ in MODULES:
        parts = name.split(".")
        if parts[-1] in ("__init__", "__main__"):
            continue
        if ".".join(parts[:-1]) != COMMANDS:
            homes.setdefault(parts[-1], []).append(".".join(parts[:-1]))
    clashes = {leaf: where for leaf, where in homes.items() if len(where) > 1 and leaf not in MIRRORS}
    assert not clashes, f"modules named alike in several sub-packages: {clashes}"


DESIGN = os.path.join(ROOT, "docs", "design.md")


def design_table():
    """``{sub-package: set of sub-packages it may import}`` as docs/design.md's import table states it,
    in the table's order ("all of the above", "all but `x`", "everything", "nothing of the package",
    or a list of names)."""
    with open(DESIGN, encoding="utf-8") as f:
        text = f.read()
    body = text.split("| sub-package | holds | may import |", 1)[1].split("\n\n", 1)[0]
    rows = [ln.split("|") for ln in body.strip().splitlines()[1:]]
    table, above = {}, []
    for row in rows:
        name, rule = row[1].strip().strip("`"), row[-2].strip()
        if rule == "nothing of the package":
            allowed = set()
        elif rule in ("all of the above", "everything"):
            allowed = set(above)
        elif rule.startswith("all but"):
            allowed = set(above) - set(re.findall(r"`(\w+)`", rule))
        else:
            allowed = set(re.findall(r"`(\w+)`", rule))
        table[name] = allowed
        above.append(name)
    return table


def table_violations(modules, table):
    """One line per import between sub-packages that the design.md ``table`` does not allow."""
    return sorted({f"{rel}:{line} ({ORDER[own]}) imports {mod} ({ORDER[other]}), not in its design.md row"
                   for rel, line, own, other, mod in stage_imports(modules)
                   if other != own and ORDER[other] not in table[ORDER[own]]})


def test_the_design_table_is_the_import_rule():
    """Every import between sub-packages is one the design.md table allows (not only a later stage:
    ``eval`` may import ``core``, ``data`` and ``model``, so ``eval`` importing ``methods`` fails)."""
    table = design_table()
    assert tuple(table) == ORDER, "docs/design.md lists the sub-packages in another order than ORDER"
    assert table["eval"] == {"core", "data", "model"} and table["core"] == set() and "cli" not in table["study"]
    probe = ("eval/x.py", "shrinkteanet.eval.x", ast.parse("from shrinkteanet.methods.base import blocks"))
    assert table_violations([probe], table) and not upward_imports_of([probe])  # the order alone allows it
    bad = table_violations(MODULES, table)
    assert not bad, "\n".join(bad)
