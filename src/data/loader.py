"""Multi-process training loader over an InsightFace RecordIO set.

Follows InsightFace ``FaceImageIter`` semantics (per-epoch shuffle of the image
keys, random mirror, ``ColorJitterAug(0.125, 0.125, 0.125)``-style brightness /
contrast / saturation jitter in random order, raw RGB 0-255 float32 NCHW output)
plus a low-resolution down/up-sampling augmentation for the low-resolution
teacher-student recipes.

Determinism: the epoch's order is ``default_rng((seed, epoch))``'s permutation of
all image keys, shard ``part_index`` takes every ``num_parts``-th of it (all shards
equally long), and each batch draws its augmentation from
``default_rng((seed, epoch, part_index, batch))``.  So a batch depends only on
``(seed, epoch, part_index, num_parts, batch)`` - not on the worker count, timing
or ``start_batch`` - and resume at ``(epoch, batch)`` replays exactly.

Workers are forked processes; each reads the ``.rec`` through its own descriptor
(``RecordReader`` reopens after fork), decodes with simplejpeg and writes its
batch straight into a shared-memory slot.  Batch ``b`` always goes to worker
``b % workers``, and the main process collects in batch order.
"""
import collections
import mmap
import multiprocessing
import os
import select
import sys
import threading
import weakref

import numpy as np

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.data.recordio import FRAMED_IR_HEADER, LREC_MASK, MAGIC, class_of

log = get_logger(__name__)

Batch = collections.namedtuple("Batch", ["data", "label", "index", "flipped"])
Batch.__doc__ = """One training batch: ``data`` float32 (B, 3, H, W) raw RGB 0-255,
``label`` int64 (B,), ``index`` int64 (B,) RecordIO keys, ``flipped`` bool (B,)."""


# Luma weights of mx.image's contrast/saturation jitter (ITU-R 601).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class _Plan:
    """Everything random about one batch, drawn before any image is read so that
    replacing a corrupt image never shifts the random stream."""

    def __init__(self, rng, n, cfg):
        self.flip = rng.random(n) < 0.5 if cfg["mirror"] else np.zeros(n, bool)
        cj = cfg["color_jitter"]
        if cj > 0:
            self.alpha = 1.0 + rng.uniform(-cj, cj, size=(n, 3)).astype(np.float32)
            self.order = np.argsort(rng.random((n, 3)), axis=1)
        lo, hi = cfg["lowres"]
        if lo > 0:
            self.lowres = rng.random(n) < cfg["lowres_prob"]
            self.lowres_size = rng.integers(lo, hi + 1, size=n)


def _color_jitter(img, alpha, order):
    """mx.image Brightness/Contrast/SaturationJitterAug in the drawn order, on float32 HWC."""
    f = img.astype(np.float32)
    for op in order:
        a = alpha[op]
        if op == 0:  # brightness
            f *= a
        elif op == 1:  # contrast: blend with the mean luma
            mean = float((f @ _LUMA).mean())
            f *= a
            f += (1.0 - a) * mean
        else:  # saturation: blend with the per-pixel luma
            gray = f @ _LUMA
            f *= a
            f += ((1.0 - a) * gray)[:, :, None]
    np.clip(f, 0.0, 255.0, out=f)
    return f


def _lowres(img, size):
    """Down-sample to ``size`` (area) and back up (bilinear): same shape, less detail."""
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (int(size), int(size)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def make_batch(dataset, keys, seed, cfg, out, *, stage=None):
    """Fill ``out[:len(keys)]`` (float32 NCHW) with the augmented images of ``keys``.

    Returns ``(label, index, flipped, corrupt_keys)``.  A corrupt image is
    replaced by the next readable image of the same batch (its key, label and
    mirror flag travel with it), so the batch keeps its size.  ``stage``: an
    optional uint8 (3, H, W) scratch array, reused between calls.
    """
    keys = [int(k) for k in keys]
    plan = _Plan(np.random.default_rng(seed), len(keys), cfg)
    labels, ok = _fill_batch(dataset, keys, plan=plan, cfg=cfg, out=out, stage=stage)
    label = np.asarray(labels, dtype=np.int64)
    check_labels(dataset, keys, label)
    index = np.asarray(keys, dtype=np.int64)
    flipped = plan.flip.copy()
    corrupt = [k for k, good in zip(keys, ok) if not good]
    if corrupt:
        _replace_corrupt(dataset, corrupt, ok, out=out, arrays=(label, index, flipped))
    return label, index, flipped, corrupt


def _fill_batch(dataset, keys, *, plan, cfg, out, stage):
    """Decode, augment and write every image of the batch into ``out``; returns the
    per-image labels and whether each image was readable.  The per-image loop keeps
    its callables in locals: it runs once per training image."""
    import cv2

    n = len(keys)
    flips = plan.flip.tolist()
    jitter = cfg["color_jitter"] > 0
    lowres = plan.lowres.tolist() if cfg["lowres"][0] > 0 else [False] * n
    lowres_size = plan.lowres_size.tolist() if cfg["lowres"][0] > 0 else None
    h, w = out.shape[2:]
    size = tuple(cfg["image_size"]) if cfg["image_size"] is not None else (h, w)
    if stage is None or stage.shape != (3, h, w) or stage.dtype != np.uint8:
        stage = np.empty((3, h, w), np.uint8)
    planes = [stage[0], stage[1], stage[2]]
    split, flip, copyto = cv2.split, cv2.flip, np.copyto
    mv = dataset.reader.view
    labels = [0] * n
    ok = [False] * n
    for i, key in enumerate(keys):
        img, labels[i] = _read_image(dataset, mv, key, size)
        if img is None:
            continue
        ok[i] = True
        if lowres[i]:
            img = _lowres(img, lowres_size[i])
        if flips[i]:
            flip(img, 1, dst=img)  # in place: the decoded array is ours
        if jitter:
            out[i] = _color_jitter(img, plan.alpha[i], plan.order[i]).transpose(2, 0, 1)
        else:
            # HWC -> three uint8 planes in a scratch that stays in L1/L2, then one
            # contiguous uint8 -> float32 cast into the batch while the planes are
            # hot: ~5 us per 112x112 image, against ~7 us when the planes of the
            # whole batch are cast at the end and ~10 us for numpy's transposing cast.
            split(img, planes)
            copyto(out[i], stage)
    return labels, ok


def _read_image(dataset, mv, key, size):
    """``(RGB uint8 HWC image or None when corrupt, class id)`` of record ``key``; ``mv``:
    the reader's memory map, fetched once per batch."""
    import simplejpeg

    payload, label = _record_payload(dataset.reader, mv, key)
    try:
        img = simplejpeg.decode_jpeg(payload, colorspace="RGB")
    except Exception:
        img = None
    if img is None or img.shape != size + (3,):
        # Anything unusual (corrupt, not a JPEG, another size) takes the
        # dataset's own path, which logs, falls back to cv2 and checks sizes.
        img, label = dataset.read_key(key)
        if img is not None and img.shape[:2] != size:
            raise InputError(
                f"{dataset.path_rec}: record {key} is {img.shape[0]}x{img.shape[1]}, expected {size[0]}x{size[1]}"
            )
    return img, label


def _record_payload(reader, mv, key):
    """``(JPEG payload view, class id)`` of record ``key``.

    The common record (one part, scalar label: RecordIO magic + length word, then the
    24-byte IRHeader) is parsed with one struct call; any other shape goes through
    ``RecordReader.read_header``, which also reports damage."""
    pos = reader.offset(key)
    magic = lrec = flag = length = 0
    if pos + 32 <= len(mv):
        magic, lrec, flag, lab, _, _ = FRAMED_IR_HEADER.unpack_from(mv, pos)
        length = lrec & LREC_MASK
    if magic == MAGIC and flag == 0 and lrec >> 29 == 0 and 24 <= length and pos + 8 + length <= len(mv):
        return mv[pos + 32 : pos + 8 + length], int(lab)
    header, payload = reader.read_header(key)
    return payload, class_of(header.label)


def _replace_corrupt(dataset, corrupt, ok, *, out, arrays):
    """Each unreadable slot takes the next readable image of the batch (cyclically), with
    its entries of ``arrays`` (label, index, flipped), so the batch keeps its size."""
    good = np.flatnonzero(ok)
    if len(good) == 0:
        raise InputError(f"{dataset.path_rec}: every image of a batch is corrupt (records {corrupt[:5]}...)")
    for i in np.flatnonzero(~np.asarray(ok)):
        j = good[np.searchsorted(good, i) % len(good)]
        out[i] = out[j]
        for a in arrays:
            a[i] = a[j]


def check_labels(dataset, keys, label):
    """Every class id must lie in ``0..num_classes-1`` (``property``): a label outside would
    train silently against a classifier too small for it.  ``InputError`` names the record."""
    num_classes = getattr(dataset, "num_classes", None)
    if not num_classes:
        return
    bad = np.flatnonzero((label < 0) | (label >= int(num_classes)))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{dataset.path_rec}: record {int(keys[i])} has label {int(label[i])}, outside "
                         f"0..{int(num_classes) - 1} (num_classes={int(num_classes)} from {dataset.path_property})")


def _die_with_parent(parent_pid, pdeathsig):
    """A worker must not outlive the trainer, whatever signal ended it (SIGKILL included).

    Linux, when the pool was forked from the main thread (``pdeathsig``):
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill this process when that thread
    exits (a pool forked from another thread would die with that thread, hence the flag).
    Everywhere: a daemon thread polls ``os.getppid()`` and leaves once the parent is gone
    (the child is re-parented).  The check after ``prctl`` covers a parent that died between
    the fork and the call."""
    import signal
    import time

    if pdeathsig and sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(dataset, cfg, slots, slot_shape, task_conn, result_conn, parent=None, inherited=()):
    import cv2

    # the parent's ends of the task pipes (this worker's and earlier ones'): while a worker
    # holds a write end of its own pipe, recv() never sees EOF when the parent dies
    for conn in inherited:
        conn.close()
    if parent is not None:
        _die_with_parent(*parent)
    cv2.setNumThreads(1)
    slot_items = int(np.prod(slot_shape))
    stage = np.empty(slot_shape[1:], np.uint8)
    while True:
        try:
            task = task_conn.recv()
        except EOFError:
            return
        if task is None:
            return
        b, slot, keys, seed = task
        try:
            if slot is None:  # every slot is held by the consumer: send the pixels through the pipe
                out = np.empty(slot_shape, np.float32)
            else:
                out = np.frombuffer(slots[slot], np.float32, slot_items).reshape(slot_shape)
            res = make_batch(dataset, keys, seed, cfg, out, stage=stage)
            result_conn.send((b, slot, len(keys), res, None, out[: len(keys)] if slot is None else None))
            del out
        except InputError as e:
            result_conn.send((b, slot, len(keys), None, ("input", str(e)), None))
        except Exception as e:  # reported in the main process with its type
            result_conn.send((b, slot, len(keys), None, ("other", f"{type(e).__name__}: {e}"), None))


class _WorkerPool:
    """Forked workers and the shared-memory batch slots they fill.

    Each slot is its own anonymous ``MAP_SHARED`` mapping, created before the
    fork.  A batch handed out as a view keeps a reference to its slot's mapping,
    so ``sys.getrefcount`` tells whether the consumer still holds any view of a
    slot; only slots nobody holds are filled again.
    """

    def __init__(self, dataset, cfg, workers, prefetch, slot_shape, spare):
        ctx = multiprocessing.get_context("fork")
        self.workers, self.prefetch = workers, prefetch
        self.slot_shape = slot_shape
        self.slot_items = int(np.prod(slot_shape))
        self.slots = [mmap.mmap(-1, self.slot_items * 4) for _ in range(workers * prefetch + spare)]
        self.task_conns, self.result_conns, self.procs = [], [], []
        for _ in range(workers):
            t_recv, t_send = ctx.Pipe(duplex=False)
            r_recv, r_send = ctx.Pipe(duplex=False)
            inherited = self.task_conns + self.result_conns + [t_send, r_recv]
            parent = (os.getpid(), threading.current_thread() is threading.main_thread())
            args = (dataset, cfg, self.slots, slot_shape, t_recv, r_send, parent, inherited)
            p = ctx.Process(target=_worker_main, args=args, daemon=True)
            p.start()
            t_recv.close()
            r_send.close()
            self.task_conns.append(t_send)
            self.result_conns.append(r_recv)
            self.procs.append(p)
        self._base_refs = [self._refs(s) for s in range(len(self.slots))]
        self.in_flight = set()
        # One poll object per result pipe, built once: Connection.poll builds a
        # selector on every call, a measurable share of the main process's CPU.
        self._pollers = []
        for c in self.result_conns:
            poller = select.poll()
            poller.register(c.fileno(), select.POLLIN)
            self._pollers.append(poller)

    def slot_view(self, slot):
        return np.frombuffer(self.slots[slot], np.float32, self.slot_items).reshape(self.slot_shape)

    def _refs(self, s):
        import sys

        return sys.getrefcount(self.slots[s])

    def free_slots(self, exclude=()):
        """Slots neither being filled nor referenced by any handed-out view."""
        return [
            s for s in range(len(self.slots))
            if s not in self.in_flight and s not in exclude and self._refs(s) <= self._base_refs[s]
        ]

    def submit(self, w, task):
        if task[1] is not None:
            self.in_flight.add(task[1])
        self.task_conns[w].send(task)

    def receive(self, w):
        conn, proc, poller = self.result_conns[w], self.procs[w], self._pollers[w]
        while not poller.poll(1000):
            if not proc.is_alive():
                raise RuntimeError(f"loader worker {w} died (exit code {proc.exitcode})")
        res = conn.recv()
        if res[1] is not None:
            self.in_flight.discard(res[1])
        return res

    def close(self):
        for c in self.task_conns:
            try:
                c.send(None)
            except (OSError, BrokenPipeError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
        for c in self.task_conns + self.result_conns:
            c.close()
        self.procs = []


def _parse_lowres(lowres_size):
    if lowres_size is None or lowres_size == 0:
        return (0, 0)
    if isinstance(lowres_size, (tuple, list)):
        lo, hi = (int(lowres_size[0]), int(lowres_size[-1]))
    else:
        lo = hi = int(lowres_size)
    if not 0 < lo <= hi:
        raise InputError(f"lowres_size must be N or (min, max) with 0 < min <= max, got {lowres_size!r}")
    return (lo, hi)


class FaceLoader:
    """Training batches over a RecordIO set (``docs/design.md``: Data).

    ``data_dir_or_rec``: set folder, ``.rec``, prefix or a ``FaceRecordDataset``.
    ``lowres_size``: 0 (off), N, or ``(min, max)``: with probability
    ``lowres_prob`` an image is area-down-sampled to that side and bilinearly
    up-sampled back.  ``color_jitter``: InsightFace's jitter strength (0.125 in its
    ``data_color`` recipes; 0 = off).  ``workers=0`` works in-process.
    Batches are handed out without copying, as views of the shared-memory slot
    a worker filled; a slot is filled again only once no view of it is alive
    (reference count of its mapping), and when fewer than one other slot is
    free the batch is copied instead, so a ``Batch`` stays valid as long as it
    is referenced.  ``spare`` slots beyond ``workers * prefetch`` allow that many
    batches to be held without copies; ``copy=True`` always copies.
    """

    def __init__(
        self,
        data_dir_or_rec,
        batch_size,
        seed=0,
        workers=2,
        mirror=True,
        color_jitter=0.0,
        lowres_size=0,
        part_index=0,
        num_parts=1,
        drop_last=True,
        lowres_prob=1.0,
        prefetch=2,
        copy=False,
        spare=2,
    ):
        from shrinkteanet.data.recordio import FaceRecordDataset

        ds = data_dir_or_rec
        if not isinstance(ds, FaceRecordDataset):
            ds = FaceRecordDataset(ds)
        if not (0 <= int(part_index) < int(num_parts)):
            raise InputError(f"part_index {part_index} is outside 0..num_parts-1 (num_parts={num_parts})")
        if int(batch_size) <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        self.dataset = ds
        self.keys = np.asarray(ds.all_record_ids, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.workers = max(0, int(workers))
        self.part_index, self.num_parts = int(part_index), int(num_parts)
        self.drop_last = bool(drop_last)
        self.prefetch = max(1, int(prefetch))
        self.copy = bool(copy)
        self.spare = max(1, int(spare))
        self.per_part = len(self.keys) // self.num_parts
        if self.per_part == 0:
            raise InputError(f"{ds.path_rec}: {len(self.keys)} images cannot fill {self.num_parts} parts")
        if ds.image_size is not None:
            h, w = ds.image_size
        else:
            img, _ = ds[0]
            h, w = img.shape[:2]
        self.image_size = (h, w)
        self.cfg = {
            "mirror": bool(mirror),
            "color_jitter": float(color_jitter),
            "lowres": _parse_lowres(lowres_size),
            "lowres_prob": float(lowres_prob),
            "image_size": (h, w),
        }
        self.num_corrupt = 0
        self._pool = None
        self._finalizer = None
        self._inflight = collections.deque()

    @property
    def num_classes(self):
        return self.dataset.num_classes

    def __len__(self):
        n = self.per_part // self.batch_size
        if not self.drop_last and self.per_part % self.batch_size:
            n += 1
        return n

    def epoch_keys(self, epoch):
        """This shard's record keys in the order of ``epoch`` (pure in seed, epoch)."""
        perm = np.random.default_rng((self.seed, int(epoch))).permutation(len(self.keys))
        return self.keys[perm[self.part_index :: self.num_parts][: self.per_part]]

    def _batch_seed(self, epoch, b):
        return (self.seed, int(epoch), self.part_index, int(b))

    def _ensure_pool(self):
        if self._pool is None:
            shape = (self.batch_size, 3) + self.image_size
            self._pool = _WorkerPool(self.dataset, self.cfg, self.workers, self.prefetch, shape, self.spare)
            self._finalizer = weakref.finalize(self, _WorkerPool.close, self._pool)
        return self._pool

    def _account(self, corrupt):
        for k in corrupt:
            if k not in self.dataset.corrupt_keys:
                self.dataset.corrupt_keys.add(k)
                log.warning("%s: record %d holds a corrupt image; skipped", self.dataset.path_rec, k)
        self.num_corrupt += len(corrupt)

    def epoch(self, epoch, start_batch=0):
        """Yield the ``Batch``es of ``epoch`` from ``start_batch`` on."""
        keys = self.epoch_keys(epoch)
        nb = len(self)
        bs = self.batch_size
        start_batch = int(start_batch)
        if not 0 <= start_batch <= nb:
            raise InputError(f"start_batch {start_batch} is outside 0..{nb}")
        if self.workers == 0:
            out = np.empty((bs, 3) + self.image_size, np.float32)
            stage = np.empty((3,) + self.image_size, np.uint8)
            for b in range(start_batch, nb):
                kb = keys[b * bs : (b + 1) * bs]
                label, index, flipped, corrupt = make_batch(
                    self.dataset, kb, self._batch_seed(epoch, b), self.cfg, out, stage=stage
                )
                self._account(corrupt)
                yield Batch(out[: len(kb)].copy(), label, index, flipped)
            return
        yield from self._epoch_workers(epoch, keys, start_batch, nb)

    def _epoch_workers(self, epoch, keys, start_batch, nb):
        pool = self._ensure_pool()
        W, P, bs = self.workers, self.prefetch, self.batch_size
        # An earlier epoch generator that is still alive (not yet closed) hands its
        # in-flight batches over to be drained here, so no stale result is read.
        self._drain(pool)
        outstanding = self._inflight = collections.deque()
        nxt = start_batch

        def submit():
            nonlocal nxt
            b = nxt
            free = pool.free_slots()
            slot = free[0] if free else None
            pool.submit(b % W, (b, slot, keys[b * bs : (b + 1) * bs], self._batch_seed(epoch, b)))
            outstanding.append(b)
            nxt += 1

        try:
            while nxt < nb and len(outstanding) < W * P:
                submit()
            while outstanding:
                b = outstanding.popleft()
                got_b, slot, n, res, err, piped = pool.receive(b % W)
                if got_b != b:
                    raise RuntimeError(f"loader worker returned batch {got_b}, expected {b}")
                if err is not None:
                    raise (InputError if err[0] == "input" else RuntimeError)(err[1])
                label, index, flipped, corrupt = res
                self._account(corrupt)
                if slot is None:
                    data = piped
                else:
                    data = pool.slot_view(slot)[:n]
                    # Lend the slot (zero copy) only while another free slot remains for
                    # the next fill; a consumer that keeps many batches gets copies.
                    if self.copy or not pool.free_slots(exclude=(slot,)):
                        data = data.copy()
                if nxt < nb:
                    submit()
                yield Batch(data, label, index, flipped)
                del data
        finally:
            # Leave no result in flight for the next epoch (generator closed early or failed).
            self._drain(pool, outstanding)

    def _drain(self, pool, outstanding=None):
        outstanding = self._inflight if outstanding is None else outstanding
        while outstanding:
            b = outstanding.popleft()
            try:
                pool.receive(b % self.workers)
            except Exception:
                outstanding.clear()
                self.close()
                break

    def close(self):
        if self._finalizer is not None:
            self._finalizer()
        self._pool = None
        self._finalizer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
