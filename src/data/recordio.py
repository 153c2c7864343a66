"""InsightFace RecordIO training sets: read, write, index.

Layout (InsightFace ``face2rec2.py`` / ``FaceImageIter``):

* ``train.rec`` - dmlc RecordIO records; ``train.idx`` - ``key<TAB>byte offset``
  lines, as ``mx.recordio.MXIndexedRecordIO`` writes them;
  ``property`` - ``num_classes,112,112``.
* record 0: meta header, ``IRHeader.label = [num_images+1, num_images+1+num_ids]``;
* records ``1..N``: images, header label = class id (scalar, or a vector whose
  first element is the class id, as face2rec2 writes ``[label, aligned]``);
* records ``N+1..N+K``: one per identity, label ``[first, last+1)`` image keys.

The byte format is written and parsed here in pure Python (dmlc-core
``RecordIOWriter``/``RecordIOReader`` framing, mxnet ``IRHeader`` struct ``IfQQ``),
so that loader worker processes never import mxnet and slice records out of a
per-process read-only memory map (reopened after ``fork``).  The tests check
every byte against ``mx.recordio``.
"""
import collections
import numbers
import os
import struct
import threading

import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import temp_name_beside
# The package's one decoder and encoder, also under the names callers and tests import from here.
from shrinkteanet.data.images import decode_image
from shrinkteanet.data.images import encode_image

log = get_logger(__name__)

#: dmlc RecordIO magic word, little endian on disk.
MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC_MASK = (1 << 29) - 1
#: mxnet ``IRHeader``: flag (uint32), label (float32), id (uint64), id2 (uint64).
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)

IRHeader = collections.namedtuple("IRHeader", ["flag", "label", "id", "id2"])

#: A one-part record as it lies in the .rec: framing (magic, cflag << 29 | length) then the IRHeader,
#: so that the loader's hot path parses the common record with one ``unpack_from``.
FRAMED_IR_HEADER = struct.Struct("<II" + _IR_FORMAT[1:])
LREC_MASK = _LREC_MASK


# ----------------------------------------------------------------------------- header


def pack(label, payload=b"", key=0, id2=0):
    """Record body = IRHeader + payload, byte-identical to ``mx.recordio.pack``.

    A scalar label goes into the header (flag 0); a vector label sets
    ``flag = len(label)`` and follows the header as float32 values.
    """
    if isinstance(payload, str):
        payload = payload.encode("latin1")
    if isinstance(label, numbers.Number):
        return struct.pack(_IR_FORMAT, 0, float(label), int(key), int(id2)) + bytes(payload)
    vec = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(_IR_FORMAT, vec.size, 0.0, int(key), int(id2)) + vec.tobytes() + bytes(payload)


def unpack(record):
    """Inverse of :func:`pack`: ``(IRHeader, payload bytes)`` as ``mx.recordio.unpack``."""
    if len(record) < _IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than its {_IR_SIZE}-byte header")
    flag, label, key, id2 = struct.unpack_from(_IR_FORMAT, record, 0)
    off = _IR_SIZE
    if flag > 0:
        if len(record) < off + 4 * flag:
            raise ValueError(f"record header announces {flag} label values past the end of the record")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=off).astype(np.float32)
        off += 4 * flag
    return IRHeader(flag, label, key, id2), record[off:]


def class_of(label):
    """Class id of an image header label: the scalar, or the first value of a vector
    (InsightFace ``FaceImageIter.next_sample``: ``label = label[0]``)."""
    if isinstance(label, numbers.Number):
        return int(label)
    return int(label[0])


# ----------------------------------------------------------------------------- framing


def frame(body):
    """dmlc ``RecordIOWriter::WriteRecord`` framing of one record.

    The payload is cut at every 4-byte aligned occurrence of the magic word
    (continuation flags 1 = first, 2 = middle, 3 = last part; the magic itself is
    dropped and the reader re-inserts it); the whole is padded to 4 bytes.
    """
    n = len(body)
    if n >= 1 << 29:
        raise InputError(f"record of {n} bytes exceeds RecordIO's 512 MiB limit")
    cuts = []
    if _MAGIC_BYTES in body:
        words = np.frombuffer(body, dtype="<u4", count=n // 4)
        cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out = []
    start = 0
    for c in cuts:
        out.append(_MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (c - start)))
        out.append(body[start:c])
        start = c + 4
    out.append(_MAGIC_BYTES + struct.pack("<I", ((3 if start else 0) << 29) | (n - start)))
    out.append(body[start:])
    pad = (-n) % 4
    if pad:
        out.append(b"\0" * pad)
    return b"".join(out)


class RecordWriter:
    """Indexed RecordIO writer (``MXIndexedRecordIO(idx, rec, 'w')`` equivalent)."""

    def __init__(self, path_rec, path_idx):
        self.path_rec, self.path_idx = path_rec, path_idx
        self._f = open(path_rec, "wb")
        self._idx = []
        self.pos = 0

    def write(self, key, body):
        self._idx.append(f"{int(key)}\t{self.pos}\n")
        data = frame(body)
        self._f.write(data)
        self.pos += len(data)

    def close(self):
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        with open(self.path_idx, "w") as f:
            f.writelines(self._idx)
            f.flush()
            os.fsync(f.fileno())


class RecordReader:
    """Random access to an indexed ``.rec`` by key (``MXIndexedRecordIO(idx, rec, 'r')``).

    Descriptor and memory map are reopened after a ``fork`` (checked by pid), so
    each loader worker reads through its own file, as InsightFace does with one
    ``MXIndexedRecordIO`` per process.
    """

    def __init__(self, path_rec, path_idx=None):
        self.path_rec = os.fspath(path_rec)
        self.path_idx = os.fspath(path_idx) if path_idx else os.path.splitext(self.path_rec)[0] + ".idx"
        for p in (self.path_rec, self.path_idx):
            if not os.path.isfile(p):
                raise InputError(f"{p}: no such file")
        self.size = os.path.getsize(self.path_rec)
        self._keys, self._offs = self._read_idx()
        # Dense key -> offset table when keys are compact (InsightFace sets: 0..N+K),
        # else a sorted search; numpy either way, so MS1M's 5.8M entries take
        # ~50 MB instead of a dict's ~600 MB in every worker.
        order = np.argsort(self._keys, kind="stable")
        self._keys, self._offs = self._keys[order], self._offs[order]
        top = int(self._keys[-1])
        if self._keys[0] >= 0 and top < 2 * len(self._keys) + 1024:
            self._table = np.full(top + 1, -1, dtype=np.int64)
            self._table[self._keys] = self._offs
        else:
            self._table = None
        self._fd = None
        self._pid = None
        self._mm = self._mv = self._mpid = None
        self._check_index()

    def _read_idx(self):
        import warnings

        with open(self.path_idx, "rb") as f:
            data = f.read()
        nlines = sum(1 for line in data.splitlines() if line.strip()) if len(data) < 1 << 16 else None
        if not data.strip():
            raise InputError(f"{self.path_idx}: empty index")
        try:
            with warnings.catch_warnings():
                # numpy warns (future: raises) when text is left unparsed
                warnings.simplefilter("error", DeprecationWarning)
                vals = np.fromstring(data, dtype=np.int64, sep=" ")
            if vals.size % 2 or (nlines is not None and vals.size != 2 * nlines):
                raise ValueError
            if nlines is None and vals.size != 2 * (data.count(b"\n") + (not data.endswith(b"\n"))):
                raise ValueError
        except (ValueError, DeprecationWarning):
            for n, line in enumerate(data.decode("latin1").splitlines(), 1):
                parts = line.strip().split("\t")
                if line.strip() and (len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts)):
                    raise InputError(f"{self.path_idx}: line {n} is not 'key<TAB>offset': {line[:60]!r}") from None
            raise InputError(f"{self.path_idx}: not a 'key<TAB>offset' index") from None
        vals = vals.reshape(-1, 2)
        return vals[:, 0].copy(), vals[:, 1].copy()

    def offset(self, key):
        key = int(key)
        if self._table is not None:
            if 0 <= key < len(self._table) and self._table[key] >= 0:
                return int(self._table[key])
        else:
            i = int(np.searchsorted(self._keys, key))
            if i < len(self._keys) and self._keys[i] == key:
                return int(self._offs[i])
        raise InputError(f"{self.path_rec}: no record with key {key} in {self.path_idx}")

    def _check_index(self):
        """Every offset inside the file, and a spread of them (first, last and up to
        254 between) pointing at a record start whose length fits the file."""
        bad = np.flatnonzero((self._offs < 0) | (self._offs > self.size - 8))
        if len(bad):
            k, pos = int(self._keys[bad[0]]), int(self._offs[bad[0]])
            raise InputError(
                f"{self.path_idx} does not match {self.path_rec}: key {k} points at byte "
                f"{pos}, past the end of the {self.size}-byte file (rebuild the .idx)"
            )
        n = len(self._keys)
        for i in sorted(set(np.linspace(0, n - 1, min(n, 256)).astype(int).tolist())):
            k, pos = int(self._keys[i]), int(self._offs[i])
            magic, lrec = struct.unpack("<II", os.pread(self.fd, 8, pos))
            if magic != MAGIC or pos + 8 + (lrec & _LREC_MASK) > self.size:
                raise InputError(
                    f"{self.path_idx} does not match {self.path_rec}: key {k} points at byte {pos}, "
                    f"which is not a record start (rebuild the .idx)"
                )

    @property
    def fd(self):
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path_rec, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    @property
    def keys(self):
        """All keys of the index, ascending (int64 array)."""
        return self._keys

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key):
        try:
            self.offset(key)
            return True
        except InputError:
            return False

    @property
    def view(self):
        """Read-only memory map of the whole ``.rec`` (per process): records are
        sliced out without a system call or a copy, which is ~7 us per image
        cheaper than two ``pread`` calls on this VM (bench_loader.py)."""
        if self._mv is None or self._mpid != os.getpid():
            import mmap

            self._mm = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)
            self._mv = memoryview(self._mm)
            self._mpid = os.getpid()
        return self._mv

    def read_view(self, key):
        """Record body of ``key`` as a memoryview into the map (bytes when the record
        was split into parts: dmlc ``RecordIOReader::NextRecord`` joins them with the
        magic word re-inserted)."""
        pos = self.offset(key)
        mv = self.view
        size = len(mv)
        parts = []
        while True:
            if pos + 8 > size:
                raise InputError(f"{self.path_rec}: record {key} is truncated at byte {pos}")
            magic, lrec = struct.unpack_from("<II", mv, pos)
            if magic != MAGIC:
                raise InputError(f"{self.path_rec}: record {key} has no RecordIO magic at byte {pos}")
            cflag, length = lrec >> 29, lrec & _LREC_MASK
            if pos + 8 + length > size:
                raise InputError(f"{self.path_rec}: record {key} is truncated at byte {pos}")
            parts.append(mv[pos + 8 : pos + 8 + length])
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                break
        return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)

    def read(self, key):
        """Raw record body of ``key`` as bytes."""
        return bytes(self.read_view(key))

    def read_header(self, key):
        """``(IRHeader, payload memoryview)`` of ``key``."""
        return unpack(self.read_view(key))

    def close(self):
        if self._mpid == os.getpid() and self._mm is not None:
            try:
                self._mv.release()
                self._mm.close()
            except BufferError:  # a caller still holds a slice; the map goes with it
                pass
        self._mm = self._mv = self._mpid = None
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fd"] = d["_pid"] = d["_mm"] = d["_mv"] = d["_mpid"] = None
        return d

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- set paths


def resolve_rec(path):
    """``DIR`` (holding ``train.rec``), ``X.rec`` or the prefix ``X`` -> (rec, idx, property).

    What is missing is named in its folder, one line (``faces_emore/: no train.rec``, ``no such
    folder``, ``no train.idx``); a missing ``property`` is left to the dataset (it derives the
    class count).  InsightFace's ``FaceImageIter`` reads ``train.rec`` + ``train.idx`` beside
    ``property`` in ``data_dir``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder, name = path, "train"
    elif path.endswith(".rec") or os.path.isfile(path + ".rec"):
        folder, name = os.path.split(path[:-4] if path.endswith(".rec") else path)
    elif os.path.isfile(path):
        raise InputError(f"{path}: not a RecordIO .rec (give the set's folder or its .rec file)")
    else:
        raise InputError(f"{_shown(path)}: no such folder (a RecordIO set: train.rec, train.idx, property)")
    base = os.path.join(folder, name)
    rec, idx = base + ".rec", base + ".idx"
    if folder and not os.path.isdir(folder):
        raise InputError(f"{_shown(folder)}: no such folder (for {name}.rec)")
    if not os.path.isfile(rec):
        raise InputError(f"{_shown(folder)}: no {name}.rec{_other_sets(folder)}")
    if not os.path.isfile(idx):
        raise InputError(f"{_shown(folder)}: no {name}.idx (the index of {name}.rec)")
    return rec, idx, os.path.join(os.path.dirname(os.path.abspath(rec)), "property")


#: Records hashed by ``data_fingerprint``, spread evenly over the set (first and last included).
FINGERPRINT_SAMPLE = 64


def data_fingerprint(path):
    """What identifies a RecordIO set's content (issue 21: a derived file, the teacher cache,
    names its source by content, not by path): ``{"idx_bytes", "records", "sample_sha1"}`` =
    the ``.idx`` size, its record count and the sha1 of ``FINGERPRINT_SAMPLE`` records (key and
    body) spread evenly over the keys.  Two sets whose keys overlap but whose images differ
    (another synthetic draw, another pack) differ here; reading 64 records costs milliseconds."""
    import hashlib

    rec, idx, _ = resolve_rec(path)
    reader = RecordReader(rec, idx)
    try:
        keys = reader.keys
        digest = hashlib.sha1()
        for i in sorted(set(np.linspace(0, len(keys) - 1, min(len(keys), FINGERPRINT_SAMPLE)).astype(int))):
            digest.update(b"%d:" % int(keys[i]))
            digest.update(reader.read_view(int(keys[i])))
        return {"idx_bytes": os.path.getsize(idx), "records": int(len(keys)), "sample_sha1": digest.hexdigest()}
    finally:
        reader.close()


def _shown(folder):
    """A folder as errors name it: with its trailing slash (``faces_emore/``)."""
    return os.path.join(folder or ".", "")


def _other_sets(folder):
    """``; it holds a.rec, b.rec`` when the folder has other ``.rec`` files (else empty)."""
    try:
        others = sorted(f for f in os.listdir(folder or ".") if f.endswith(".rec"))
    except OSError:
        return ""
    return f"; it holds {', '.join(others[:3])}" + (" ..." if len(others) > 3 else "") if others else ""


def read_property(path):
    """``property`` file -> (num_classes, height, width), InsightFace layout: three positive
    decimal integers; anything else is an ``InputError`` quoting the text."""
    with open(path, "rb") as f:
        text = f.read().decode("latin-1").strip()
    try:
        fields = [v.strip() for v in text.split(",")]
        if len(fields) != 3 or not all(v.isascii() and v.isdigit() for v in fields):
            raise ValueError
        vals = [int(v) for v in fields]
        if min(vals) <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"{path}: expected 'num_classes,height,width' (positive integers), "
                         f"got {text[:60]!r}") from None
    return tuple(vals)


# ----------------------------------------------------------------------------- writing


def _encode_job(args):
    image, quality = args
    return encode_image(image, quality)


def _label_vector(label, extra):
    if extra is None:
        return int(label)
    ex = np.atleast_1d(np.asarray(extra, dtype=np.float32)).ravel()
    return np.concatenate([[float(label)], ex]).astype(np.float32)


def write_rec_set(
    out_dir,
    samples,
    *,
    num_classes=None,
    quality=95,
    workers=None,
    image_size=(IMAGE_SIZE, IMAGE_SIZE),
    name="train",
    progress=True,
    total=None,
    chunk=512,
):
    """Write an InsightFace training set ``out_dir/{name}.rec|.idx`` + ``property``.

    ``samples``: iterable of ``(image, label)`` or ``(image, label, extra)``, sorted
    by label; ``image`` is an RGB uint8 HWC array (JPEG-encoded here, in
    ``workers`` processes) or JPEG bytes (stored as they are); ``extra`` (a number
    or sequence) makes the header label the vector ``[label, *extra]``, as
    face2rec2's ``[label, aligned]``.  Layout as in ``face2rec2.py``: record 0 =
    ``[N+1, N+1+K]``, images ``1..N``, identity records ``[first, last+1)``.
    Files appear under their final names only when complete (temp + rename;
    ``property`` last).  Returns ``{"num_images", "num_ids", "num_classes", "rec"}``.
    """
    from tqdm import tqdm

    from shrinkteanet.core.utils import process_pool

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rec, idx = os.path.join(out_dir, name + ".rec"), os.path.join(out_dir, name + ".idx")
    tag = f".{os.getpid()}.{threading.get_ident()}"
    writer = RecordWriter(temp_name_beside(rec, tag), temp_name_beside(idx, tag))
    workers = max(1, (os.cpu_count() or 1) if workers is None else int(workers))
    pool = process_pool(workers) if workers > 1 else None
    bar = tqdm(total=total, unit="img", desc=f"pack {name}", disable=not progress, leave=False)
    try:
        header_len = _reserve_meta_header(writer)
        images = _ImageRecords(writer)
        for batch in _chunks(samples, chunk):
            labels, extras, jobs = _checked_jobs(batch, first=images.key, image_size=image_size, quality=quality)
            images.append(labels, extras, _encode_jobs(jobs, pool, workers))
            bar.update(len(batch))
        num_images = images.key - 1
        if num_images == 0:
            raise InputError(f"{out_dir}: no samples to write")
        _write_identity_records(writer, images.ids, images.key, header_len)
        writer.close()
        num_classes = _checked_num_classes(images.ids, num_classes)
        _publish_set(out_dir, (rec, idx), tag, f"{int(num_classes)},{image_size[0]},{image_size[1]}")
    except BaseException:
        _discard_temp(writer, (rec, idx), tag)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    log.info("wrote %s: %d images, %d identities, %d classes", rec, num_images, len(images.ids), num_classes)
    return {"num_images": num_images, "num_ids": len(images.ids), "num_classes": int(num_classes), "rec": rec}


def _reserve_meta_header(writer):
    """Record 0 (the meta header) is rewritten in place at the end: reserve its exact size now."""
    header_len = len(frame(pack([0.0, 0.0], b"", 0)))
    writer._idx.append(f"0\t{writer.pos}\n")
    writer._f.write(b"\0" * header_len)
    writer.pos += header_len
    return header_len


def _chunks(samples, chunk):
    """Lists of up to ``chunk`` samples, in order (one encoding round each)."""
    it = iter(samples)
    while True:
        batch = []
        for s in it:
            batch.append(s)
            if len(batch) >= chunk:
                break
        if not batch:
            return
        yield batch


def _checked_jobs(batch, *, first, image_size, quality):
    """Validate one chunk of samples (record keys from ``first``): ``(labels, extras, jobs)``
    with one ``(image, quality)`` encoding job per sample; a bad sample is an ``InputError``
    naming its 0-based position."""
    labels, extras, jobs = [], [], []
    for n, s in enumerate(batch):
        if len(s) not in (2, 3):
            raise InputError(f"sample {first + n - 1}: expected (image, label[, extra]), got {len(s)} fields")
        img = _checked_image(s[0], first + n - 1, image_size)
        labels.append(int(s[1]))
        extras.append(s[2] if len(s) == 3 else None)
        jobs.append((img, quality))
    return labels, extras, jobs


def _checked_image(img, pos, image_size):
    """JPEG bytes pass through; an array must be HWC RGB uint8 of ``image_size``."""
    if isinstance(img, (bytes, bytearray, memoryview)):
        return img
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"sample {pos}: image must be HWC RGB uint8, got {img.dtype} {img.shape}")
    if tuple(img.shape[:2]) != tuple(image_size):
        raise InputError(
            f"sample {pos}: image is {img.shape[0]}x{img.shape[1]}, expected {image_size[0]}x{image_size[1]}"
        )
    return img


def _encode_jobs(jobs, pool, workers):
    """JPEG bytes of every job, in order; in the pool only when more than one image needs encoding."""
    if pool is not None and sum(not isinstance(j[0], (bytes, bytearray)) for j in jobs) > 1:
        return pool.map(_encode_job, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    return [_encode_job(j) for j in jobs]


class _ImageRecords:
    """Appends image records ``1..N`` and tracks the identity ranges ``[label, first, end)``
    (face2rec2: identities contiguous, labels ascending)."""

    def __init__(self, writer):
        self.writer = writer
        self.key = 1  # the next record key
        self.ids = []  # [label, first key, last key + 1]

    def append(self, labels, extras, jpegs):
        for lab, ex, jpg in zip(labels, extras, jpegs):
            if lab < 0:
                raise InputError(f"sample {self.key - 1}: negative label {lab}")
            last_label = self.ids[-1][0] if self.ids else None
            if last_label is None or lab != last_label:
                if last_label is not None and lab < last_label:
                    raise InputError(f"sample {self.key - 1}: labels must be sorted (label {lab} after {last_label})")
                self.ids.append([lab, self.key, self.key])
            self.writer.write(self.key, pack(_label_vector(lab, ex), jpg, self.key))
            self.ids[-1][2] = self.key + 1
            self.key += 1


def _write_identity_records(writer, ids, key, header_len):
    """One record per identity from ``key`` on (label ``[first, end)``), then the meta header
    ``[N+1, N+1+K]`` into the space reserved for record 0."""
    num_images = key - 1
    for _, first, end in ids:
        writer.write(key, pack([float(first), float(end)], b"", key))
        key += 1
    head = frame(pack([float(num_images + 1), float(num_images + 1 + len(ids))], b"", 0))
    assert len(head) == header_len
    writer._f.seek(0)
    writer._f.write(head)
    writer._f.seek(0, os.SEEK_END)


def _checked_num_classes(ids, num_classes):
    """``num_classes`` (default: the largest label + 1), which every label must fit."""
    max_label = ids[-1][0]
    if num_classes is None:
        return max_label + 1
    if max_label >= num_classes:
        raise InputError(f"label {max_label} does not fit num_classes={num_classes}")
    return num_classes


def _discard_temp(writer, paths, tag):
    """A failed write leaves nothing behind: close and delete the temp files."""
    writer.close()
    for path in paths:
        if os.path.exists(temp_name_beside(path, tag)):
            os.unlink(temp_name_beside(path, tag))


def _publish_set(out_dir, paths, tag, property_text):
    """Rename the finished temp files onto their names; ``property`` is written last, so a set
    with a ``property`` is complete."""
    from shrinkteanet.core.utils import atomic_write_bytes

    for path in paths:
        os.replace(temp_name_beside(path, tag), path)
    atomic_write_bytes(os.path.join(out_dir, "property"), property_text.encode())


# ----------------------------------------------------------------------------- reading


class FaceRecordDataset:
    """Gluon-style dataset of ``(HWC uint8 RGB image, int label)`` over an
    InsightFace RecordIO set, following ``FaceImageIter``: header record 0 with
    ``flag > 0`` gives the identity records ``label[0]..label[1]``, each with its
    image range; without that header every key of the index is an image.

    ``path_rec``: the set's directory, its ``.rec`` or its prefix.
    ``part_index``/``num_parts`` keep every ``num_parts``-th image for one worker of
    a distributed job.  A corrupt JPEG is logged (with the record key), counted in
    ``.num_corrupt`` and replaced by the next readable image of the shard; an
    image whose size differs from ``property`` raises ``InputError``.
    """

    def __init__(self, path_rec, part_index=0, num_parts=1, check_size=True):
        self.path_rec, self.path_idx, self.path_property = resolve_rec(path_rec)
        if not (0 <= int(part_index) < int(num_parts)):
            raise InputError(f"part_index {part_index} is outside 0..num_parts-1 (num_parts={num_parts})")
        self.reader = RecordReader(self.path_rec, self.path_idx)
        self.check_size = check_size
        self.num_corrupt = 0
        self.corrupt_keys = set()
        self.identity_ranges = []  # (first key, end key) per identity, header order
        if 0 in self.reader:
            header, _ = self.reader.read_header(0)
        else:
            header = None
        if header is not None and header.flag > 0:
            self.header0 = (int(header.label[0]), int(header.label[1]))
            for ik in range(*self.header0):
                h, _ = self.reader.read_header(ik)
                if h.flag < 2:
                    raise InputError(f"{self.path_rec}: identity record {ik} has no [first, end) label")
                self.identity_ranges.append((int(h.label[0]), int(h.label[1])))
            if self.identity_ranges:
                keys = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.identity_ranges])
            else:
                keys = np.arange(1, self.header0[0], dtype=np.int64)
        else:
            self.header0 = None
            keys = self.reader.keys.tolist()
        self.all_record_ids = np.asarray(keys, dtype=np.int64)
        self.record_ids = self.all_record_ids[int(part_index) :: int(num_parts)]
        self.part_index, self.num_parts = int(part_index), int(num_parts)
        if os.path.isfile(self.path_property):
            self.num_classes, h, w = read_property(self.path_property)
            self.image_size = (h, w)
        else:
            self.num_classes = self._derive_num_classes()
            self.image_size = None
            log.warning("%s: no property; derived num_classes=%d from the records of %s",
                        _shown(os.path.dirname(self.path_rec)), self.num_classes, os.path.basename(self.path_rec))

    def _derive_num_classes(self):
        if self.identity_ranges:
            # Images of one identity share its class: one header read per identity.
            top = max(class_of(self.reader.read_header(a)[0].label) for a, b in self.identity_ranges if b > a)
            return max(top + 1, len(self.identity_ranges))
        top = -1
        for k in self.all_record_ids:
            top = max(top, class_of(self.reader.read_header(int(k))[0].label))
        return top + 1

    def __len__(self):
        return len(self.record_ids)

    def read_key(self, key):
        """``(image or None when the JPEG is corrupt, class id)`` for a record key."""
        header, payload = self.reader.read_header(int(key))
        label = class_of(header.label)
        try:
            img = decode_image(payload)
        except Exception:
            if key not in self.corrupt_keys:
                self.corrupt_keys.add(key)
                self.num_corrupt += 1
                log.warning("%s: record %d holds a corrupt image; skipped", self.path_rec, key)
            return None, label
        if self.check_size and self.image_size is not None and img.shape[:2] != tuple(self.image_size):
            raise InputError(
                f"{self.path_rec}: record {key} is {img.shape[0]}x{img.shape[1]}, "
                f"property says {self.image_size[0]}x{self.image_size[1]}"
            )
        return img, label

    def __getitem__(self, i):
        n = len(self.record_ids)
        for step in range(n):
            img, label = self.read_key(self.record_ids[(i + step) % n])
            if img is not None:
                return img, label
        raise InputError(f"{self.path_rec}: no readable image in this shard")

    def label_of(self, key):
        return class_of(self.reader.read_header(int(key))[0].label)

    def transform(self, fn, lazy=True):
        """Gluon ``Dataset.transform`` (through ``SimpleDataset``; mxnet imported here only)."""
        from mxnet.gluon.data import SimpleDataset

        return SimpleDataset(self).transform(fn, lazy)

    def transform_first(self, fn, lazy=True):
        """Gluon ``Dataset.transform_first`` equivalent."""
        from mxnet.gluon.data import SimpleDataset

        return SimpleDataset(self).transform_first(fn, lazy)

    def __getstate__(self):
        return dict(self.__dict__)
