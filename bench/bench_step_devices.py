"""Step time of the training loop on two CPU contexts (issue 24: per-step host syncs and the
BatchNorm backup).  A tiny ``mfnr_self`` and ``mfnr_margin`` (the margin head's fixed fc7 is
``classes x emb``) on the 32x32 tiny set; the median wall and process-CPU time per step over
steps 4..N.  Prints one line per config.

    .venv/bin/python bench/bench_step_devices.py [--steps 40] [--classes 500]
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import numpy as np  # noqa: E402


def step_times(name, data, steps, extra):
    import mxnet as mx

    from shrinkteanet.study.tiny import train_overrides
    from shrinkteanet.training import config, train

    marks = []
    cfg = config.config_by_name(name, train_overrides(data, None, f"max_batches={steps}", "lr_schedule=constant",
                                                      "frequent=20", *extra))
    train.train(cfg, [mx.cpu(0), mx.cpu(1)],
                callbacks=[lambda info: marks.append((time.perf_counter(), time.process_time()))])
    wall = np.diff([m[0] for m in marks])[3:]
    cpu = np.diff([m[1] for m in marks])[3:]
    return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--classes", type=int, default=500)
    args = ap.parse_args()
    from shrinkteanet.study.tiny import train_tiny_teacher, write_tiny_set

    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_set(os.path.join(tmp, "set"), ids=args.classes, per=2, with_bin=False)
        print("mfnr_self   wall %.1f ms cpu %.1f ms per step" % step_times("mfnr_self", data, args.steps, []))
        teacher = train_tiny_teacher(data, os.path.join(tmp, "teacher"))
        print("mfnr_margin wall %.1f ms cpu %.1f ms per step (fc7 %d classes)" % (
            step_times("mfnr_margin", data, args.steps, [f"teacher={teacher}"]) + (args.classes,)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
