"""MTCNN detection + alignment throughput (issue 11) on 640x480 photos, 2 cores.

Photos: the four real photographs of ``make test-assets`` (face_recognition 1.3.0
tests/test_images: obama, obama2, obama3, biden) and their mirror images, each scaled
to 480 rows and centred on a 640x480 grey canvas.  Each image goes through
``detect_and_align`` (P-Net pyramid, R-Net, O-Net, 5-point similarity to 112x112).

Rows, measured round-robin in one run (best round of each):
  (1) this project's default: hybridized (static_alloc/static_shape), P-Net level by level
      (the mtcnn wheel's schedule);
  (2) the same, pyramid packed into one canvas for a single P-Net run (``mosaic=True``);
  (3) imperative (not hybridized) Gluon, level by level: the baseline that (1) speeds up.

Run: ``.venv/bin/python bench/bench_mtcnn.py`` (updates its section of docs/benchmarks.md).
"""
import argparse
import datetime
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from shrinkteanet.data.mtcnn import MTCNN, detect_and_align  # noqa: E402
from _common import loadavg, write_marked_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(os.environ.get("SHRINKTEANET_TEST_ASSETS", os.path.join(ROOT, "test-assets")), "face_recognition")
NAMES = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


def photos_640x480():
    out = []
    for n in NAMES:
        path = os.path.join(ASSETS, n)
        img = cv2.imread(path)
        if img is None:
            sys.exit(f"bench_mtcnn: {path} missing; run `make test-assets` first")
        s = 480.0 / img.shape[0]
        img = cv2.resize(img[:, :, ::-1], (int(round(img.shape[1] * s)), 480), interpolation=cv2.INTER_AREA)
        canvas = np.full((480, 640, 3), 128, np.uint8)
        x = (640 - img.shape[1]) // 2
        canvas[:, x:x + img.shape[1]] = img
        out += [canvas, np.ascontiguousarray(canvas[:, ::-1])]
    return out


def run_round(det, photos):
    t = time.perf_counter()
    ok = 0
    for img in photos:
        aligned, _ = detect_and_align(img, detector=det)
        ok += aligned is not None
    return len(photos) / (time.perf_counter() - t), ok


def stage_ms(det, photos, reps=3):
    from shrinkteanet.data.mtcnn import normalise

    tot = np.zeros(3)
    for _ in range(reps):
        for img in photos:
            norm = normalise(img)
            t0 = time.perf_counter()
            r1 = det.stage1(norm)
            t1 = time.perf_counter()
            r2 = det.stage2(norm, r1)
            t2 = time.perf_counter()
            det.stage3(norm, r2)
            tot += [t1 - t0, t2 - t1, time.perf_counter() - t2]
    return 1e3 * tot / (reps * len(photos))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    cv2.setNumThreads(int(os.environ["OMP_NUM_THREADS"]))
    photos = photos_640x480()
    t0, load0 = time.time(), loadavg()
    configs = [
        ("(1) hybridized, P-Net level by level (default)", MTCNN()),
        ("(2) hybridized, pyramid packed into one P-Net run", MTCNN(mosaic=True)),
        ("(3) imperative Gluon, level by level", MTCNN(hybridize=False)),
    ]
    rates = {name: [] for name, _ in configs}
    found = {}
    for name, det in configs:  # warm-up: graph build, MKLDNN primitive caches
        run_round(det, photos)
    for _ in range(args.rounds):
        for name, det in configs:
            r, ok = run_round(det, photos)
            rates[name].append(r)
            found[name] = ok
    stages = stage_ms(configs[0][1], photos)
    load1 = loadavg()
    best = {k: max(v) for k, v in rates.items()}
    base = best[configs[2][0]]
    lines = [
        "## MTCNN detection + alignment (issue 11: `bench/bench_mtcnn.py`)",
        "",
        f"Date {datetime.date.today().isoformat()}; machine: {os.cpu_count()}-core CPU, Python "
        f"{platform.python_version()}, mxnet 1.9.1 (MKLDNN); OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"MXNET_CPU_WORKER_NTHREADS={os.environ['MXNET_CPU_WORKER_NTHREADS']}, OpenCV threads "
        f"{cv2.getNumThreads()}.  Input: {len(photos)} photos of 640x480 (the four face_recognition 1.3.0 test "
        "photos and their mirror images, scaled to 480 rows on a grey canvas), min face 20, thresholds "
        "0.6/0.7/0.7; each image: detect, pick the largest face, align to 112x112.",
        f"Load average {load0:.2f} before and {load1:.2f} after: the machine was shared with other jobs, so "
        f"absolute rates are noisy; rows were measured round-robin ({args.rounds} rounds, best round shown).",
        "",
        "| configuration | images/s | vs (3) | faces aligned | all rounds |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, _ in configs:
        lines.append(f"| {name} | {best[name]:.1f} | {best[name] / base:.2f}x | {found[name]}/{len(photos)} | "
                     + ", ".join(f"{r:.1f}" for r in rates[name]) + " |")
    lines += [
        "",
        f"Per image in (1): P-Net stage {stages[0]:.1f} ms (pyramid resize, P-Net, NMS), "
        f"R-Net stage {stages[1]:.1f} ms, O-Net stage {stages[2]:.1f} ms (mean of 3 passes). "
        f"Run time {time.time() - t0:.0f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_marked_section("bench_mtcnn", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
