"""Training-loader throughput (issue 5): images/s of FaceLoader with 2 workers on a
20k-image synthetic .rec, side by side in one run with

(a) an InsightFace-style sequential iterator written the obvious way (one Python
    thread: MXIndexedRecordIO.read_idx, mx.image.imdecode to NDArray, per-sample
    NDArray mirror, nd.transpose into an NDArray batch, as FaceImageIter.next), and
(b) the decode bound: single-core simplejpeg decode rate x cores.

Run: ``.venv/bin/python bench/bench_loader.py`` (updates its section of docs/benchmarks.md).
"""
import argparse
import datetime
import os
import platform
import random
import re
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from shrinkteanet.data.loader import FaceLoader  # noqa: E402
from shrinkteanet.data.recordio import RecordReader, unpack, write_rec_set  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
START, END = "<!-- bench_loader:start -->", "<!-- bench_loader:end -->"


def synth_images(n, seed=0):
    """Face-sized 112x112 images with face-like JPEG statistics: a smooth random
    layout plus mild sensor noise (about 6-9 KB at quality 95)."""
    rng = np.random.RandomState(seed)
    for i in range(n):
        small = rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)
        img = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        yield img, i // 20


def make_set(d, n):
    if not os.path.isfile(os.path.join(d, "property")):
        write_rec_set(d, synth_images(n), quality=95, workers=2, progress=False)
    return d


def load_payloads(d, n):
    r = RecordReader(os.path.join(d, "train.rec"))
    return [unpack(r.read(k))[1] for k in range(1, n + 1)]


def decode_rate(payloads):
    """Single-core decode rate: simplejpeg, RGB, one process."""
    import simplejpeg

    t = time.perf_counter()
    for p in payloads:
        simplejpeg.decode_jpeg(p, colorspace="RGB")
    return len(payloads) / (time.perf_counter() - t)


def insightface_style(d, n, batch_size):
    """FaceImageIter.next written the obvious way, one thread."""
    import mxnet as mx
    from mxnet import nd

    rec = mx.recordio.MXIndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"), "r")
    h, _ = mx.recordio.unpack(rec.read_idx(0))
    seq = list(range(1, int(h.label[0])))
    random.Random(0).shuffle(seq)
    seq = seq[:n]
    t = time.perf_counter()
    done = 0
    for start in range(0, len(seq) - batch_size + 1, batch_size):
        batch_data = nd.empty((batch_size, 3, 112, 112))
        batch_label = nd.empty((batch_size,))
        for i, idx in enumerate(seq[start : start + batch_size]):
            header, s = mx.recordio.unpack(rec.read_idx(idx))
            label = header.label if isinstance(header.label, float) else header.label[0]
            img = mx.image.imdecode(s)
            if random.randint(0, 1) == 1:
                img = nd.flip(data=img, axis=1)
            batch_data[i][:] = nd.transpose(img, axes=(2, 0, 1))
            batch_label[i][:] = label
        batch_data.wait_to_read()
        done += batch_size
    return done / (time.perf_counter() - t)


def epoch_rate(loader, e):
    gen = loader.epoch(e)
    next(gen)  # worker start-up and the first fill are not throughput
    t = time.perf_counter()
    n = 0
    for b in gen:
        n += len(b.label)
    return n / (time.perf_counter() - t)


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def mem_gib():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def write_doc(text):
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    old = open(DOC).read() if os.path.isfile(DOC) else "# Benchmarks\n"
    block = f"{START}\n{text.rstrip()}\n{END}\n"
    if START in old and END in old:
        new = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda m: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block
    tmp = DOC + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, DOC)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-images", type=int, default=4096, help="images through the slow baseline (a)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    ap.add_argument("--set-dir", default=None, help="reuse/keep the synthetic set here")
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    cores = args.workers
    tmp = None
    if args.set_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loader_")
        args.set_dir = tmp.name
    t0 = time.time()
    load0 = loadavg()
    make_set(args.set_dir, args.images)
    payloads = load_payloads(args.set_dir, min(args.images, 4000))
    mean_bytes = float(np.mean([len(p) for p in payloads]))
    loader = FaceLoader(args.set_dir, args.batch_size, seed=0, workers=args.workers, mirror=True)
    nocopy = FaceLoader(args.set_dir, args.batch_size, seed=0, workers=args.workers, mirror=True, copy=False)
    singles, runs, runs_nc = [], [], []
    try:
        # Interleaved rounds, best of each: the machine is shared, so each figure
        # takes its quietest moment and no row gets a systematically better one.
        for r in range(args.rounds):
            singles.append(decode_rate(payloads))
            runs.append(epoch_rate(loader, r))
            runs_nc.append(epoch_rate(nocopy, r))
    finally:
        loader.close()
        nocopy.close()
    single, ours_rate, nc_rate = max(singles), max(runs), max(runs_nc)
    bound = single * cores
    base = insightface_style(args.set_dir, args.baseline_images, args.batch_size)
    load1 = loadavg()
    r_a, r_b = ours_rate / base, ours_rate / bound
    rows = [
        (f"FaceLoader, {args.workers} workers (default, batches copied out)", ours_rate,
         f"best of {args.rounds} epochs: " + ", ".join(f"{r:.0f}" for r in runs)),
        (f"FaceLoader, {args.workers} workers, copy=False (shared-memory views)", nc_rate,
         f"best of {args.rounds} epochs: " + ", ".join(f"{r:.0f}" for r in runs_nc)),
        ("(a) InsightFace-style sequential iterator", base, f"{args.baseline_images} images, 1 thread"),
        ("(b) decode bound = single-core decode x cores", bound,
         f"best single-core {single:.0f}/s (rounds: " + ", ".join(f"{r:.0f}" for r in singles) + f") x {cores}"),
    ]
    lines = [
        "## Data loader (issue 5: `bench/bench_loader.py`)",
        "",
        f"Date {datetime.date.today().isoformat()}; machine: {os.cpu_count()}-core CPU, {mem_gib():.0f} GiB, "
        f"Python {platform.python_version()}, "
        f"mxnet 1.9.1 (MKLDNN); set: {args.images} synthetic 112x112 JPEG faces (q95, mean {mean_bytes / 1024:.1f} KB), "
        f"batch {args.batch_size}, mirror on, OMP_NUM_THREADS=1.",
        f"Load average {load0:.2f} before and {load1:.2f} after the run: the machine was shared with other jobs, "
        "so absolute rates are noisy; all rows come from this one run (interleaved rounds, best of each).",
        "",
        "| reader | images/s | notes |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {n} | {r:.0f} | {note} |" for n, r, note in rows]
    lines += [
        "",
        f"Ratios: {r_a:.1f}x the InsightFace-style iterator (target >= 4x), "
        f"{100 * r_b:.0f}% of the decode bound (target >= 80%); copy=False: {nc_rate / base:.1f}x and "
        f"{100 * nc_rate / bound:.0f}%. Run time {time.time() - t0:.0f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_doc(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
