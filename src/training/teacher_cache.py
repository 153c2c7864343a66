"""Teacher-embedding cache: the frozen teacher's final embedding of every training
image and of its mirror, computed once and memory-mapped during training.

ShrinkTeaNet's last angular term (Eq. 6, i = n) compares the student's
embedding with the teacher's ``fc1`` output of the same (possibly mirrored)
image.  The teacher is frozen (BatchNorm on global statistics, no dropout), so
that target is a fixed function of (record key, mirror flag) as long as the
loader adds no colour jitter; caching it saves the teacher's full forward pass.
The intermediate terms (i < n) still run the teacher's tails on the student's
adapted features, so the method keeps those.

Layout of ``CACHE/`` (a folder):

* ``meta.json`` - ``{version, model, data, teacher, data_fingerprint, num_images,
  emb_size, image_size, dtype: "float16", done}``; ``done`` rows are complete.
  ``teacher`` is ``model.checkpoint.checkpoint_fingerprint`` of the teacher (sha1 of its
  symbol and params files) and ``data_fingerprint`` ``data.recordio.data_fingerprint`` of the
  set (``.idx`` size, record count, sha1 of a spread sample of records): the cache is bound to
  the content it was computed from, not to path strings (issue 21), so another teacher, a
  teacher retrained into the same folder or another set with overlapping keys is refused by
  ``train`` (``check_source``) and by ``cache-teacher`` (which rebuilds on ``--rebuild``).
* ``keys.npy``  - int64 record keys of the rows, ascending.
* ``emb.f16``   - raw float16 array ``(num_images, 2, emb_size)``: ``[:, 0]`` the
  image, ``[:, 1]`` its mirror.

Building is resumable: rows are written in key order in chunks, flushed, and
``done`` advances (atomically) after each chunk.  A rebuild (``rebuild=True``) fills a fresh
cache in ``CACHE/.rebuild/`` (itself resumable) and only then replaces the three files, the
metadata last: the old cache stays whole, and usable, until the new one is complete.
"""
import json
import os
import shutil

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import write_json

log = get_logger(__name__)

VERSION = 2
META, KEYS, EMB = "meta.json", "keys.npy", "emb.f16"
#: The sub-folder a ``--rebuild`` fills before it replaces the cache.
REBUILD = ".rebuild"
#: What a cache must hold to be checked against its source (version 2 on).
_SOURCE_FIELDS = ("teacher", "data_fingerprint")


def _read_meta(path):
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{meta_path}: unreadable teacher cache metadata ({e})") from None
    for field in ("version", "num_images", "emb_size", "done"):
        if field not in meta:
            raise InputError(f"{meta_path}: field {field!r} missing")
    if meta["version"] != VERSION:
        raise InputError(f"{meta_path}: cache version {meta['version']}, this code reads {VERSION} (it binds the "
                         f"cache to its teacher's and data's content); rebuild it with `shrinkteanet cache-teacher "
                         f"--rebuild`")
    for field in _SOURCE_FIELDS:
        if not isinstance(meta.get(field), dict):
            raise InputError(f"{meta_path}: field {field!r} missing")
    return meta


def source_difference(meta, teacher, data):
    """The first part of the cache's source that is not ``teacher`` (a checkpoint fingerprint)
    or ``data`` (a data fingerprint), as words for a message, or None when both match."""
    names = {"symbol_sha1": "symbol file", "params_sha1": "params file", "idx_bytes": ".idx size",
             "records": "record count", "sample_sha1": "content of the sampled records"}
    for field, what, now in (("teacher", "teacher checkpoint", teacher), ("data_fingerprint", "data", data)):
        old = meta.get(field) or {}
        for key, value in now.items():
            if old.get(key) != value:
                return f"another {what}: its {names.get(key, key)} differs ({_short(old.get(key))} != {_short(value)})"
    return None


def _short(value):
    text = str(value)
    return text[:12] if len(text) == 40 else text


class TeacherCache:
    """Read side: ``lookup(index, flipped) -> float32 (B, D)`` teacher embeddings."""

    def __init__(self, path):
        self.path = os.fspath(path)
        meta = _read_meta(self.path)
        if meta is None:
            raise InputError(f"--teacher-cache {self.path}: no {META} (build it with `shrinkteanet cache-teacher`)")
        if meta["done"] < meta["num_images"]:
            raise InputError(f"--teacher-cache {self.path}: incomplete ({meta['done']} of {meta['num_images']} "
                             f"images); run `shrinkteanet cache-teacher` again to finish it")
        self.meta = meta
        self.keys = np.load(os.path.join(self.path, KEYS))
        n, d = int(meta["num_images"]), int(meta["emb_size"])
        if self.keys.shape != (n,):
            raise InputError(f"{os.path.join(self.path, KEYS)}: {self.keys.shape[0]} keys for {n} images")
        emb_path = os.path.join(self.path, EMB)
        if not os.path.isfile(emb_path) or os.path.getsize(emb_path) != n * 2 * d * 2:
            raise InputError(f"{emb_path}: missing or not {n}x2x{d} float16 values")
        self.emb = np.memmap(emb_path, dtype=np.float16, mode="r", shape=(n, 2, d))
        self.emb_size = d

    def __len__(self):
        return len(self.keys)

    def rows(self, index):
        index = np.asarray(index, dtype=np.int64)
        rows = np.searchsorted(self.keys, index)
        rows = np.minimum(rows, len(self.keys) - 1)
        bad = self.keys[rows] != index
        if bad.any():
            raise InputError(f"{self.path}: record key {int(index[bad][0])} is not in the teacher cache "
                             f"(built for another data set?)")
        return rows

    def lookup(self, index, flipped):
        """Teacher embeddings of records ``index`` (mirrored where ``flipped``), float32."""
        rows = self.rows(index)
        return np.asarray(self.emb[rows, np.asarray(flipped, dtype=np.int64)], dtype=np.float32)

    def check_covers(self, keys):
        """Fail early (one line) when the training set has records the cache lacks."""
        self.rows(np.asarray(keys))

    def check_data(self, data):
        """Refuse (one ``InputError``) a cache that was not computed on this ``data`` (the set's
        folder or ``.rec``, by content: ``data.recordio.data_fingerprint``); a set whose keys
        overlap the cache's was accepted before issue 21."""
        from shrinkteanet.data.recordio import data_fingerprint

        diff = source_difference(self.meta, {}, data_fingerprint(data))
        if diff:
            raise InputError(f"--teacher-cache {self.path}: built on {self.meta.get('data')}, not on {data} ({diff}); "
                             f"build a cache for this data with `shrinkteanet cache-teacher`")

    def check_teacher(self, teacher, emb_size):
        """Refuse (one ``InputError``) a cache whose embeddings are not ``emb_size`` wide (the
        teacher's: the target of Eq. 6, i = n) or that was not computed by this ``teacher``
        (``(prefix, epoch)``, by content: ``model.checkpoint.checkpoint_fingerprint``), before the
        first step; ``train --teacher B --teacher-cache CACHE_OF_A`` trained on A's embeddings
        before issue 21, and a cache of another width ended in an MXNet traceback."""
        from shrinkteanet.model.checkpoint import checkpoint_fingerprint

        where = f"--teacher-cache {self.path}"
        if int(emb_size) != self.emb_size:
            raise InputError(f"{where}: embeddings of size {self.emb_size}, but the teacher's are {int(emb_size)} "
                             f"(built by {self.meta.get('model')})")
        diff = source_difference(self.meta, checkpoint_fingerprint(*teacher), {})
        if diff:
            raise InputError(f"{where}: built by {self.meta.get('model')}, not by --teacher {teacher[0]},{teacher[1]} "
                             f"({diff}); build a cache for this teacher with `shrinkteanet cache-teacher` (--rebuild "
                             f"to replace this one)")


def build_cache(model, data, out, *, batch_size=64, ctx=None, chunk=1024, progress=True, mkldnn=True,
                rebuild=False):
    """Compute (or finish) the cache of ``model`` over the RecordIO set ``data`` into the folder ``out``.

    Embeddings are the ``fc1`` outputs of ``shrinkteanet.eval.embed.Embedder`` (inference
    mode: BatchNorm global statistics, as the frozen teacher in training).

    Parameters
    ----------
    model : str or (str, int)
        ``PREFIX,EPOCH`` or ``(prefix, epoch)`` of the teacher.
    data : str
        The ``.rec`` (or its folder).
    out : str
        The cache folder; a partial cache of the same teacher and data is finished, one of
        another teacher or data (by content: ``source_difference``) refused.
    batch_size, ctx, mkldnn
        Passed to the ``Embedder``.
    chunk : int
        Rows written (and ``done`` advanced) at a time.
    progress : bool
        Show a progress bar.
    rebuild : bool
        Replace the cache in ``out`` (whatever it was built from) by a new one, filled in
        ``out/.rebuild/`` and moved in once complete (``_replace_cache``).

    Returns
    -------
    dict
        The metadata (``meta.json``).
    """
    from shrinkteanet.core.utils import parse_model_arg
    from shrinkteanet.data.recordio import FaceRecordDataset
    from shrinkteanet.eval.embed import Embedder

    from shrinkteanet.data.recordio import data_fingerprint
    from shrinkteanet.model.checkpoint import checkpoint_fingerprint

    model_arg = model if isinstance(model, str) else f"{model[0]},{model[1]}"
    prefix, epoch = parse_model_arg(model_arg)
    ds = FaceRecordDataset(data)
    keys = np.asarray(sorted(int(k) for k in ds.all_record_ids), dtype=np.int64)
    image_size = _square_image_size(ds)
    embedder = Embedder((prefix, epoch), ctx=ctx, batch_size=batch_size, image_size=image_size[0], mkldnn=mkldnn,
                        what=f"--data {data}")
    probe = embedder.embed(np.zeros((1,) + tuple(image_size) + (3,), np.uint8), flip=False)
    ident = {"version": VERSION, "model": f"{os.path.abspath(prefix)},{epoch}", "data": os.path.abspath(ds.path_rec),
             "teacher": checkpoint_fingerprint(prefix, epoch), "data_fingerprint": data_fingerprint(ds.path_rec),
             "num_images": len(keys), "emb_size": int(probe.shape[1]), "image_size": int(image_size[0]),
             "dtype": "float16"}
    target = os.path.join(out, REBUILD) if rebuild else out
    meta = _open_cache(target, ident, keys, rebuild=rebuild)
    if meta["done"] < meta["num_images"]:
        _fill(target, meta, _Source(ds, keys, image_size, embedder), chunk=chunk, progress=progress)
    if rebuild:
        _replace_cache(out)
    return meta


def _replace_cache(out):
    """Move the complete cache of ``out/.rebuild/`` over the one in ``out``: the old metadata
    goes first (a crash in between leaves a folder without ``meta.json``, which every reader
    refuses, never old metadata over new rows), the new metadata last."""
    new = os.path.join(out, REBUILD)
    if os.path.exists(os.path.join(out, META)):
        os.remove(os.path.join(out, META))
    for name in (KEYS, EMB, META):
        os.replace(os.path.join(new, name), os.path.join(out, name))
    shutil.rmtree(new)


def _read_meta_or_none(out):
    """A rebuild's own partial metadata, or None when it is missing or unreadable (started over)."""
    try:
        return _read_meta(out)
    except InputError:
        return None


def _ident_difference(meta, ident):
    """Words for the first field of ``ident`` the cache's ``meta`` does not share (None: same)."""
    diff = source_difference(meta, ident["teacher"], ident["data_fingerprint"])
    if diff:
        return diff
    for k, v in ident.items():
        if meta.get(k) != v:
            return f"another {k} ({meta.get(k)!r} != {v!r})"
    return None


def _square_image_size(ds):
    """(H, W) of the set's images; the cache needs square faces."""
    if ds.image_size is None:
        img, _ = ds[0]
        image_size = img.shape[:2]
    else:
        image_size = tuple(ds.image_size)
    if image_size[0] != image_size[1]:
        raise InputError(f"{ds.path_rec}: images are {image_size[0]}x{image_size[1]}; the cache needs square faces")
    return image_size


def _open_cache(out, ident, keys, *, rebuild=False):
    """The metadata of the cache in ``out``: an existing one of the same ``ident`` (teacher and
    data by content and path, sizes), or a new empty one (keys and a zero-filled embedding
    file written).  With ``rebuild`` (``out`` is then the ``.rebuild`` folder) a partial
    rebuild of another source is started over instead of refused."""
    os.makedirs(out, exist_ok=True)
    meta = _read_meta_or_none(out) if rebuild else _read_meta(out)
    n = ident["num_images"]
    if meta is not None:
        diff = _ident_difference(meta, ident)
        if diff and not rebuild:
            raise InputError(f"{os.path.join(out, META)}: cache was built for {diff}; its embeddings are not this "
                             f"teacher's: rebuild it with `shrinkteanet cache-teacher --rebuild` (or use a new --out)")
        if not diff:
            log.info("%s: %s (%d images)", out, "complete" if meta["done"] >= n else
                     f"resuming at image {meta['done']} of", n)
            return meta
    meta = dict(ident, done=0)
    np.save(os.path.join(out, KEYS + ".tmp.npy"), keys)
    os.replace(os.path.join(out, KEYS + ".tmp.npy"), os.path.join(out, KEYS))
    with open(os.path.join(out, EMB), "wb") as f:
        f.truncate(n * 2 * ident["emb_size"] * 2)
    write_json(os.path.join(out, META), meta)
    return meta


class _Source:
    """The images of record ``keys`` of ``ds`` and the ``embedder`` that embeds them."""

    def __init__(self, ds, keys, image_size, embedder):
        self.ds, self.keys, self.image_size, self.embedder = ds, keys, tuple(image_size), embedder

    def embed(self, a, b):
        """(emb, emb_mirror) of rows ``a:b``, float16."""
        images = np.empty((b - a,) + self.image_size + (3,), np.uint8)
        for i, k in enumerate(self.keys[a:b]):
            img, _ = self.ds.read_key(int(k))
            if img is None:  # corrupt JPEG: the loader never yields this key, any value will do
                img = np.zeros(self.image_size + (3,), np.uint8)
            images[i] = img
        e, ef = self.embedder.embed_parts(images)  # finite: the Embedder's require_finite
        e, ef = e.astype(np.float16), ef.astype(np.float16)
        if not (np.isfinite(e).all() and np.isfinite(ef).all()):  # finite in float32, not in float16
            raise InputError(f"{self.embedder.name}: embeddings beyond float16's range (|x| > 65504) in records "
                             f"{int(self.keys[a])}..{int(self.keys[b - 1])}; the cache stores float16")
        return e, ef


def _fill(out, meta, source, *, chunk, progress):
    """Embed rows ``meta['done']..`` chunk by chunk; ``done`` moves on (atomically) after each
    flushed chunk, so a killed build resumes where it stopped."""
    from tqdm import tqdm

    n = meta["num_images"]
    emb = np.memmap(os.path.join(out, EMB), dtype=np.float16, mode="r+", shape=(n, 2, meta["emb_size"]))
    bar = tqdm(total=n, initial=meta["done"], unit="img", desc="cache-teacher", disable=not progress)
    try:
        for a in range(meta["done"], n, chunk):
            b = min(a + chunk, n)
            emb[a:b, 0], emb[a:b, 1] = source.embed(a, b)
            emb.flush()
            meta["done"] = b
            write_json(os.path.join(out, META), meta)
            bar.update(b - a)
    finally:
        bar.close()
        del emb
