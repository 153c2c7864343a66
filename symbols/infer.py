"""Which registered network a saved ``-symbol.json`` is: family and shape, read from the graph.

InsightFace's checkpoints carry their architecture only in the symbol file (``mx.model``'s
JSON graph); its names are those of InsightFace's ``fresnet.py`` and ``fmobilefacenet.py``,
which ``symbols.common`` copies, so this package's own checkpoints read the same way.

* fresnet (``conv0`` + ``stage<i>_unit<j>_*``): units per stage = the highest ``j`` of each
  stage (InsightFace's r18 2,2,2,2 ... r100 3,13,30,3), filters = ``conv0`` and each stage's
  ``unit1_conv1``; only what ``symbols.fresnet`` builds is accepted: ``version_input=1``
  (3x3 stride-1 ``conv0``), the IR unit (``version_unit=3``: ``_bn3`` present), output 'E'
  (``bn1`` -> ``pre_fc1``), PReLU, no SE (``_se_`` nodes).  Layers = 2 * sum(units) + 2.
* fmobilefacenet (``conv_1`` ... ``conv_6sep``): blocks (``conv_2_dw`` = 1 or the ``res_2``
  count; ``res_3..5`` block counts), widths from the ``_conv_proj``/``_conv_sep`` filters,
  the GDC kernel of ``conv_6dw7_7`` = the final map; ``y1`` is ``mfn`` (1, 4, 6, 2).
* the embedding size is ``pre_fc1``'s ``num_hidden``.

Nothing here imports MXNet: ``shrinkteanet config`` reads a checkpoint's network this way.
An architecture variant this package does not build is a ``ValueError`` naming the variant;
a graph of another family gives None.
"""
import ast
import dataclasses
import re

from . import registry, tables

_STAGE_UNIT = re.compile(r"^stage(\d)_unit(\d+)_")
_RES_BLOCK = re.compile(r"^res_(\d)_block(\d+)_")


@dataclasses.dataclass(frozen=True)
class Inferred:
    """A network read from a symbol: the registry ``network`` name, ``emb_size``, the family
    options that differ from that name's defaults (``opts``), the ``final_map`` side the output
    unit expects (None when the head takes any size) and the family ``shape`` (units/blocks,
    filters, groups) for messages."""

    network: str
    emb_size: int
    opts: dict
    final_map: int | None
    shape: dict

    def describe(self):
        """``r100 (units (3, 13, 30, 3), filters (64, ...), emb 512)``: one line for messages."""
        parts = ", ".join(f"{k} {tuple(v)}" for k, v in self.shape.items())
        return f"{self.network} ({parts}, emb {self.emb_size})"


def _attrs(node):
    """A node's attributes whatever MXNet version wrote the file (``attrs``, ``attr``, ``param``)."""
    return node.get("attrs") or node.get("attr") or node.get("param") or {}


def _tuple(text):
    value = ast.literal_eval(str(text))
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def graph_nodes(symbol_json):
    """``{name: (op, attrs)}`` of the operator nodes of a parsed symbol file."""
    return {n["name"]: (n["op"], _attrs(n)) for n in symbol_json.get("nodes", []) if n.get("op") != "null"}


def infer_network(symbol_json):
    """The ``Inferred`` network of a parsed ``-symbol.json``, or None for a graph that is
    neither fresnet nor fmobilefacenet.  ``ValueError`` for a variant this package cannot build."""
    nodes = graph_nodes(symbol_json)
    if "conv0" in nodes and any(_STAGE_UNIT.match(n) for n in nodes):
        return _fresnet(nodes)
    if "conv_1_conv2d" in nodes and "conv_6sep_conv2d" in nodes:
        return _mobilefacenet(nodes)
    return None


def _filters(nodes, name):
    return int(nodes[name][1]["num_filter"])


def _emb_size(nodes):
    if "pre_fc1" not in nodes:
        raise ValueError("no 'pre_fc1' FullyConnected before fc1 (not an InsightFace output unit)")
    return int(nodes["pre_fc1"][1]["num_hidden"])


def _check_prelu(nodes, name, family):
    op, attrs = nodes.get(name, (None, {}))
    if op != "LeakyReLU" or attrs.get("act_type", "leaky") != "prelu":
        raise ValueError(f"{family} with activation {attrs.get('act_type', op)!r} at {name!r}: only PReLU is built")


def _fresnet(nodes):
    """fresnet's shape (module docstring); the registry name of its depth when one has it."""
    if any("_se_" in n for n in nodes):
        raise ValueError("fresnet with SE blocks (use_se): not built by this package")
    op, attrs = nodes["conv0"]
    if _tuple(attrs.get("kernel", "(3, 3)")) != (3, 3) or _tuple(attrs.get("stride", "(1, 1)")) != (1, 1):
        raise ValueError("fresnet with version_input != 1 (conv0 not 3x3 stride 1): not built by this package")
    if "stage1_unit1_bn3" not in nodes:
        raise ValueError("fresnet unit version other than 3 (IR: no stage1_unit1_bn3): not built by this package")
    if "conv_6dw7_7_conv2d" in nodes or "bn1" not in nodes:
        raise ValueError("fresnet output unit other than 'E' (bn1 -> pre_fc1 -> fc1): not built by this package")
    _check_prelu(nodes, "relu0", "fresnet")
    units = [0, 0, 0, 0]
    for name in nodes:
        m = _STAGE_UNIT.match(name)
        if m and 1 <= int(m.group(1)) <= 4:
            units[int(m.group(1)) - 1] = max(units[int(m.group(1)) - 1], int(m.group(2)))
    filters = [_filters(nodes, "conv0")] + [_filters(nodes, f"stage{i}_unit1_conv1") for i in range(1, 5)]
    layers = 2 * sum(units) + 2
    name = f"r{layers}" if tables.FRESNET_UNITS.get(layers) == tuple(units) and f"r{layers}" in registry.REGISTRY \
        else registry.DEFAULT_FRESNET
    opts = {} if tuple(units) == tables.FRESNET_UNITS.get(int(name[1:])) else {"units": units}
    if tuple(filters) != tables.FRESNET_FILTERS:
        opts["filters"] = filters
    return Inferred(name, _emb_size(nodes), opts, None, {"units": units, "filters": filters})


def _block_count(nodes, stage):
    found = {int(m.group(2)) for m in map(_RES_BLOCK.match, nodes) if m and int(m.group(1)) == stage}
    return len(found)


def _mobilefacenet(nodes):
    """fmobilefacenet's shape (module docstring): ``mfn`` (= InsightFace ``y1``) or ``mfnr``
    when the widths are theirs, else ``mfn`` with the widths as options."""
    _check_prelu(nodes, "conv_1_relu", "fmobilefacenet")
    blocks = [1 if "conv_2_dw_conv2d" in nodes else _block_count(nodes, 2)] + \
        [_block_count(nodes, s) for s in (3, 4, 5)]
    filters = [_filters(nodes, "conv_1_conv2d")] + \
        [_filters(nodes, f"{u}_conv_proj_conv2d") for u in ("dconv_23", "dconv_34", "dconv_45")] + \
        [_filters(nodes, "conv_6sep_conv2d")]
    groups = [_filters(nodes, f"{u}_conv_sep_conv2d") for u in
              ("dconv_23", "res_3_block0", "dconv_34", "res_4_block0", "dconv_45", "res_5_block0")]
    if "conv_6dw7_7_conv2d" not in nodes:
        raise ValueError("fmobilefacenet output unit other than 'GDC' (conv_6dw7_7): not built by this package")
    kernel = _tuple(nodes["conv_6dw7_7_conv2d"][1]["kernel"])[0]
    name = "mfn"
    for variant, (f_default, g_default) in tables.MOBILEFACENET_WIDTHS.items():
        if (tuple(filters), tuple(groups)) == (f_default, g_default):
            name = variant
    opts = {} if tuple(blocks) == tables.MFN_BLOCKS else {"blocks": blocks}
    if name == "mfn" and (tuple(filters), tuple(groups)) != tables.MOBILEFACENET_WIDTHS["mfn"]:
        opts.update(filters=filters, groups=groups)
    shape = {"blocks": blocks, "filters": filters, "groups": groups}
    return Inferred(name, _emb_size(nodes), opts, int(kernel), shape)
