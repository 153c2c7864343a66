"""face2rec2 ``.lst`` files: ``aligned<TAB>path<TAB>label[<TAB>bbox x4<TAB>10 landmark numbers]``.

Landmarks are stored as in InsightFace ``face_preprocess.parse_lst_line``: the
five x values, then the five y values (``reshape(2, 5).T`` gives (x, y) rows).
"""
import collections
import os

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.utils import atomic_open

LstItem = collections.namedtuple("LstItem", ["aligned", "path", "label", "bbox", "landmarks"])


def parse_lst_line(line, where="line"):
    """One line -> ``LstItem`` (bbox float (4,) or None, landmarks float (5, 2) or None)."""
    vec = line.rstrip("\r\n").split("\t")
    if len(vec) not in (3, 7, 17):
        raise InputError(f"{where}: expected 3, 7 or 17 tab-separated fields, got {len(vec)}")
    try:
        aligned = bool(int(vec[0]))
        label = int(vec[2])
        bbox = np.array([float(v) for v in vec[3:7]]) if len(vec) >= 7 else None
        lm = np.array([float(v) for v in vec[7:17]]).reshape(2, 5).T.copy() if len(vec) == 17 else None
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    for name, values in (("bbox", bbox), ("landmarks", lm)):
        if values is not None and not np.isfinite(values).all():
            shown = " ".join(vec[3:7] if name == "bbox" else vec[7:17])
            raise InputError(f"{where}: {name} holds a non-finite number ({shown})")
    if label < 0:
        raise InputError(f"{where}: negative label {label}")
    return LstItem(aligned, vec[1], label, bbox, lm)


def _decode_line(raw, where):
    """A ``.lst`` is UTF-8 text: another encoding is an ``InputError`` naming the line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None


def read_lst(path, root=None):
    """All items of a ``.lst``; relative image paths are joined to ``root`` (default:
    the folder of the ``.lst``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such .lst file")
    root = os.path.dirname(os.path.abspath(path)) if root is None else os.fspath(root)
    items = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode_line(raw, f"{path}:{n}")
            if not line.strip():
                continue
            it = parse_lst_line(line, f"{path}:{n}")
            items.append(it._replace(path=os.path.join(root, it.path)))
    if not items:
        raise InputError(f"{path}: no entries")
    return items


def format_lst_line(item, root=None):
    p = item.path if root is None else os.path.relpath(item.path, root)
    fields = [str(int(bool(item.aligned))), p, str(int(item.label))]
    if item.bbox is not None:
        fields += [f"{float(v):g}" for v in np.asarray(item.bbox).ravel()[:4]]
        if item.landmarks is not None:
            lm = np.asarray(item.landmarks, dtype=np.float64).reshape(5, 2)
            fields += [f"{v:.4f}" for v in lm[:, 0]] + [f"{v:.4f}" for v in lm[:, 1]]
    elif item.landmarks is not None:
        raise InputError(f"{item.path}: landmarks need a bbox in the .lst layout")
    return "\t".join(fields)


def write_lst(path, items, root=None):
    """Write items atomically (paths relative to ``root`` when given)."""
    with atomic_open(path, "w") as f:
        for it in items:
            f.write(format_lst_line(it, root) + "\n")
