"""Training throughput on CPU, tiny configs: self-studied, L2, ShrinkTeaNet without and with
the teacher-embedding cache (issue 7; target: the cache >= 1.2x faster than without).

All rows run in one process on the same 56x56 synthetic set, the same student (a narrow
MobileFaceNet-R) and the same teacher (a narrow r18-layout LResNet-E-IR), one after the other in
rounds; img/s counts steady-state steps only (after 3 warm-up steps).  Writes its section of
docs/benchmarks.md.

    .venv/bin/python bench/bench_train.py [--steps 24] [--rounds 3]
"""
import argparse
import datetime
import os
import re
import sys
import tempfile
import time

# one compute thread and the loader in-process: per-step CPU time of this process is then the work
# of the step, which stays comparable when other jobs share the machine (wall time does not)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
START, END = "<!-- bench_train:start -->", "<!-- bench_train:end -->"

STUDENT = "net_opts={'blocks':[1,2,2,1],'filters':[16,32,64,128,128]}"
TEACHER = "teacher_net_opts={'units':[2,2,2,2],'filters':[16,32,64,128,256]}"
SIZE, IDS, PER, BATCH = 56, 32, 8, 32


def make_set(path):
    from shrinkteanet.data.recordio import write_rec_set

    rng = np.random.RandomState(0)
    protos = rng.randint(0, 256, size=(IDS, 7, 7, 3)).astype(np.float32)
    samples = []
    for c in range(IDS):
        base = np.kron(protos[c], np.ones((SIZE // 7, SIZE // 7, 1)))
        for _ in range(PER):
            samples.append((np.clip(base + rng.randn(SIZE, SIZE, 3) * 25, 0, 255).astype(np.uint8), c))
    write_rec_set(path, samples, image_size=(SIZE, SIZE), workers=1, progress=False)


def common(data):
    return [f"data_dir={data}", STUDENT, "teacher_network=r18", TEACHER, "emb_size=128", f"batch_size={BATCH}",
            "lr=0.05", "loss=arcface", "workers=0", "verbose=0", "frequent=100000", "num_classes=0",
            "lr_schedule=constant"]


def timed_run(cfg):
    from shrinkteanet import train

    cpu, wall = [], []

    def stamp(info):
        cpu.append(time.process_time())
        wall.append(time.perf_counter())

    train.train(cfg, callbacks=[stamp])
    return BATCH / float(np.median(np.diff(cpu[3:]))), BATCH / float(np.median(np.diff(wall[3:])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()

    import mxnet as mx

    from shrinkteanet import config, train
    from shrinkteanet.teacher_cache import build_cache

    tmp = tempfile.mkdtemp(prefix="bench_train_")
    data = os.path.join(tmp, "set")
    make_set(data)
    tcfg = config.config_by_name("teacher_r90", common(data) + [
        "network=r18", TEACHER.replace("teacher_net_opts", "net_opts"), "max_batches=2", f"out={tmp}/teacher/model"])
    t = train.train(tcfg)
    teacher = f"{tmp}/teacher/model,{t['checkpoint']}"
    t0 = time.perf_counter()
    build_cache(teacher, data, os.path.join(tmp, "cache"), progress=False)
    cache_s = time.perf_counter() - t0

    rows = [("self-studied (mfnr_self)", "mfnr_self", []),
            ("L2 embedding, Student-1 (mfnr_l2)", "mfnr_l2", [f"teacher={teacher}"]),
            ("ShrinkTeaNet, live teacher (mfnr_stn)", "mfnr_stn", [f"teacher={teacher}"]),
            ("ShrinkTeaNet, teacher cache (mfnr_stn --teacher-cache)", "mfnr_stn",
             [f"teacher={teacher}", f"teacher_cache={tmp}/cache"])]
    load0 = os.getloadavg()[0]
    results = {name: [] for name, _, _ in rows}
    walls = {name: [] for name, _, _ in rows}
    for _ in range(args.rounds):
        for name, cfg_name, extra in rows:
            cfg = config.config_by_name(cfg_name, common(data) + extra + [f"max_batches={args.steps}"])
            by_cpu, by_wall = timed_run(cfg)
            results[name].append(by_cpu)
            walls[name].append(by_wall)
    load1 = os.getloadavg()[0]
    best = {k: max(v) for k, v in results.items()}
    live, cached = best[rows[2][0]], best[rows[3][0]]
    lines = [START, "## Training engine (issue 7: `bench/bench_train.py`)", "",
             f"Date {datetime.date.today().isoformat()}; machine 2-core CPU, 24 GiB, Python 3.11, mxnet "
             f"{mx.__version__} (MKLDNN); OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}.  "
             f"MXNET_CPU_WORKER_NTHREADS={os.environ['MXNET_CPU_WORKER_NTHREADS']}, loader in-process.  "
             f"Set: {IDS * PER} synthetic images of {SIZE}x{SIZE}, {IDS} identities, batch {BATCH}.  "
             f"Student: MobileFaceNet-R blocks (1,2,2,1), widths (16,32,64,128,128), emb 128; teacher: "
             f"LResNet-E-IR units (2,2,2,2), widths (16,32,64,128,256).  "
             f"{args.steps} steps per run; img/s = batch / median CPU time of a steady-state step (this process's "
             f"CPU time, after 3 warm-up steps; wall-clock img/s in the last column), "
             f"best of {args.rounds} round-robin rounds.  Load average {load0:.1f} before, {load1:.1f} after"
             f"{': the machine was shared with other jobs, absolute rates are noisy' if max(load0, load1) > 2.5 else ''}.",
             "", "| method | img/s per CPU-s (best) | vs self-studied | all rounds | wall img/s (best) |",
             "| --- | ---: | ---: | --- | ---: |"]
    base = best[rows[0][0]]
    for name, _, _ in rows:
        lines.append(f"| {name} | {best[name]:.1f} | {best[name] / base:.2f}x | "
                     f"{', '.join(f'{v:.1f}' for v in results[name])} | {max(walls[name]):.1f} |")
    lines += ["", f"Teacher cache vs live teacher: **{cached / live:.2f}x** (target >= 1.2x).  Building the cache "
              f"({IDS * PER} images + mirrors) took {cache_s:.1f} s.",
              "With the cache the teacher's full forward pass is skipped; the frozen tails of stages 1-3 still run "
              "forward and backward (to reach the adapters), so the gain is the share of one teacher forward pass "
              f"in a step.  Here that share is small: the L2 row (student + one teacher forward) costs "
              f"{1 / best[rows[1][0]] - 1 / base:.4f} CPU-s per image more than self-studied, out of "
              f"{1 / live:.4f} CPU-s per image for the ShrinkTeaNet step, whose teacher tails cost "
              f"{1 / live - 1 / best[rows[1][0]]:.4f}.",
              "", "GPU timings (mixed precision, 4-GPU data parallel) are not recorded: no GPU was available to "
              "this work.", END]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        doc = open(DOC).read() if os.path.exists(DOC) else "# Benchmarks\n"
        if START in doc:
            doc = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: text, doc, flags=re.S)
        else:
            doc = doc.rstrip("\n") + "\n\n" + text + "\n"
        from shrinkteanet.utils import atomic_write_bytes

        atomic_write_bytes(DOC, doc.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
