"""Synthetic face generator (issue 5): time to write the default suite on one core, and the
raw-pixel baseline on its verification targets (cosine of mean-subtracted pixels, the
10-fold accuracy of ``shrinkteanet.eval.verification.evaluate``), side by side with the
difficulty knob at 0.5x / 1x / 1.5x of the default.

Run: ``.venv/bin/python bench/bench_synth.py`` (updates its section of docs/benchmarks.md).
"""
import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from shrinkteanet.data import face_render  # noqa: E402

from shrinkteanet.data import synth  # noqa: E402
from shrinkteanet.data.binfile import load_bin  # noqa: E402
from shrinkteanet.eval.verification import evaluate  # noqa: E402
from _common import write_marked_section  # noqa: E402

TARGETS = ("lfw", "cfp_fp", "agedb_30")


def raw_pixel_accuracy(path):
    imgs, issame = load_bin(path)
    x = imgs.reshape(len(imgs), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    return evaluate(x, issame)["accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = synth.generate(os.path.join(tmp, "full"), workers=1, progress=False)
        full_s = time.perf_counter() - t
        base = {k: raw_pixel_accuracy(os.path.join(tmp, "full", k + ".bin")) for k in TARGETS}
        for f in (0.5, 1.5):
            d = face_render.DEFAULT_DIFFICULTY * f
            out = os.path.join(tmp, f"d{f}")
            synth.generate(out, identities=2, images_per_id=1, ijb=False, megaface=False, difficulty=d, workers=1,
                           progress=False)
            rows.append((d, {k: raw_pixel_accuracy(os.path.join(out, k + ".bin")) for k in TARGETS}))
    rows.insert(1, (face_render.DEFAULT_DIFFICULTY, base))
    load1 = os.getloadavg()[0]
    n = res["num_rendered"]
    lines = [
        "## Synthetic faces (issue 5: `bench/bench_synth.py`)",
        "",
        f"Date {datetime.date.today().isoformat()}; machine: 2-core CPU, Python {platform.python_version()}, "
        f"one rendering process (OMP_NUM_THREADS=1).  Load average {load0:.2f} before and {load1:.2f} after"
        + (": the machine was shared with other jobs, so the time is an upper bound." if max(load0, load1) > 1.5 else "."),
        "",
        f"Default suite (`shrinkteanet data synth OUT`: 100 identities x 20 images, 3 x 600 pairs, IJB-C 200 templates, "
        f"MegaFace 20x6 probes + 1000 distractors): {n} images rendered and written in {full_s:.1f} s "
        f"({1000 * full_s / n:.2f} ms per image, JPEG and file writes included).",
        "",
        "Raw-pixel baseline (cosine of mean-subtracted RGB pixels, InsightFace 10-fold accuracy), 600 pairs per target:",
        "",
        "| difficulty | lfw | cfp_fp | agedb_30 |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for d, acc in rows:
        tag = " (default)" if d == face_render.DEFAULT_DIFFICULTY else ""
        lines.append(f"| {d:g}{tag} | " + " | ".join(f"{acc[k]:.4f}" for k in TARGETS) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_marked_section("bench_synth", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
