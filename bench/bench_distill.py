"""Distillation methods (issue 6): training-step cost of each method relative to the
self-studied student, and a short tiny run showing every loss term going down.

Part 1 - step time.  One SGD step (forward, backward, update) of every method on the
same random batch, student and teacher at full width, measured round-robin (best round
per method) in one process so that load from other jobs hits all rows alike.  The
teacher is a randomly initialised checkpoint (step time does not depend on its
weights).  ``stn (cached)`` passes the teacher embedding in, as the trainer's
teacher-embedding cache does: the teacher's full forward is skipped, its tails still run.

Part 2 - tiny run.  Tiny r18 teacher (trained for 30 steps on 16 synthetic 32x32
images) and tiny MobileFaceNet student; 25 SGD steps per method on that batch (the
run of tests/test_distill.py::test_short_run_every_term_decreases); first and last
value of every loss part.

Run: ``.venv/bin/python bench/bench_distill.py`` (updates its section of docs/benchmarks.md).
"""
import argparse
import os
import sys
import tempfile
import time

# one OpenMP thread: on the shared 2-core machine two spinning threads per process made
# the step times vary tenfold between rounds
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from shrinkteanet.methods.base import assembler  # noqa: E402
from shrinkteanet.training.config import generate_config  # noqa: E402
from shrinkteanet.model.checkpoint import save_checkpoint  # noqa: E402
from shrinkteanet.model.network import EmbeddingNet, materialize  # noqa: E402
from shrinkteanet.study import tiny  # noqa: E402
from shrinkteanet.training.networks import build_networks  # noqa: E402
from _common import loadavg, write_marked_section


def make_teacher(prefix, network, emb, size, classes, opts):
    net = EmbeddingNet(network, emb_size=emb, image_size=size, **opts)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    materialize(net, size)
    arg, aux = net.get_params()
    arg["fc7_weight"] = mx.nd.random.normal(0, 0.01, shape=(classes, emb))
    save_checkpoint(prefix, 1, net.embedding_symbol, arg, aux)
    return prefix


def build(method, student, teacher, ckpt, size, classes, emb, extra=()):
    kt = method.startswith("lowres_kt")
    cfg = generate_config(teacher if kt else student, "synth", "arcface", method, [
        f"emb_size={emb}", f"image_size={size}", f"num_classes={classes}", f"teacher={ckpt},1",
        f"teacher_network={teacher}", f"lowres_size={size // 2}", *extra])
    s, t, fc7 = build_networks(cfg)
    return assembler.build_method(cfg, s, t, teacher_fc7=fc7, hybridize=True)


def step(method, trainer, data, label, temb=None):
    with mx.autograd.record():
        parts = method(data, label, temb) if temb is not None else method(data, label)
        total = mx.nd.add_n(*[v.sum() for v in parts.values()]) if len(parts) > 1 else list(parts.values())[0].sum()
    total.backward()
    trainer.step(data.shape[0])
    mx.nd.waitall()
    return parts


def part1(args, tmp):
    ckpt = make_teacher(os.path.join(tmp, "teacher"), args.teacher, args.emb, args.size, args.classes, {})
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.uniform(0, 255, size=(args.batch, 3, args.size, args.size)))
    label = mx.nd.array(rng.randint(0, args.classes, size=args.batch))
    rows = [("none", "none", (), False), ("l2", "l2", (), False), ("stn", "stn", (), False),
            ("stn (cached teacher emb)", "stn", (), True),
            ("stn stages [4] only", "stn", ("distill_stages=[4]",), False),
            ("kd", "kd", (), False), ("hint", "hint", (), False), ("margin", "margin", (), False),
            ("lowres_kd", "lowres_kd", (), False), ("lowres_kt", "lowres_kt", (), False),
            ("lowres_ktkd", "lowres_ktkd", (), False)]
    built = []
    for label_, method_name, extra, cached in rows:
        m = build(method_name, args.student, args.teacher, ckpt, args.size, args.classes, args.emb, extra)
        trainer = mx.gluon.Trainer(m.trainable_params(), "sgd", {"learning_rate": 1e-4, "momentum": 0.9})
        temb = None
        if cached:
            with mx.autograd.pause(train_mode=False):
                out = m.teacher(data)
            temb = (out[0] if isinstance(out, (list, tuple)) else out).copy()
        for _ in range(args.warmup):
            step(m, trainer, data, label, temb)
        built.append((label_, m, trainer, temb))
    times = {r[0]: [] for r in built}
    for _ in range(args.rounds):
        for label_, m, trainer, temb in built:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(m, trainer, data, label, temb)
            times[label_].append((time.perf_counter() - t0) / args.steps)
    base = min(times["none"])
    out = []
    for label_, m, _, _ in built:
        best = min(times[label_])
        student = f"{args.teacher}@{m.student_size}" if m.method.startswith("lowres_kt") else \
            f"{args.student}@{m.student_size}"
        out.append((label_, student, best * 1000, best / base, ", ".join(m.loss_weights),
                    ", ".join(f"{t * 1000:.0f}" for t in times[label_])))
    return out


def part2(tmp, steps=25):
    """The short runs of tests/test_distill.py::test_short_run_every_term_decreases, on the shared tiny
    pair of ``study.tiny`` (teacher, configs, batch and SGD loop are the test's own)."""
    ckpt = tiny.train_distill_teacher(os.path.join(tmp, "tiny"))
    data, label = tiny.distill_batch(6, n=16)
    weights = ("softmax_weight=0.1", "l2_lambda=0.1", "hint_lambda=10", "kd_emb_lambda=5")
    out = []
    for name, extra in [("stn", ()), ("l2", ("distill_stages=[2,4]",)), ("kd", ("kd_emb_loss=angular",)),
                        ("hint", ()), ("margin", ()), ("lowres_kd", ()), ("lowres_ktkd", ("kd_emb_loss=l2",)),
                        ("lowres_kt", ()), ("none", ())]:
        mx.random.seed(0)
        _, m = tiny.build_distill_method(name, ckpt, *extra, *weights, hybridize=True)
        trainer = mx.gluon.Trainer(m.trainable_params(), "sgd", {"learning_rate": 0.005, "momentum": 0.9})
        hist = tiny.sgd_steps(m, trainer, data, label, steps)
        terms = ", ".join(f"{k} {hist[0][k]:.3g} -> {hist[-1][k]:.3g}" for k in hist[0])
        ok = all(hist[-1][k] < hist[0][k] for k in hist[0])
        out.append((name + (f" ({', '.join(extra)})" if extra else ""), terms, "yes" if ok else "NO"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="mfn")
    ap.add_argument("--teacher", default="r18", help="teacher network (the paper's r90 is too slow for CPU)")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--emb", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    mx.random.seed(0)
    load0, t0 = loadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = part1(args, tmp)
        tiny = part2(tmp)
    load1, elapsed = loadavg(), time.time() - t0
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    lines = [
        "## Distillation methods (issue 6: `bench/bench_distill.py`)", "",
        f"Date 2026-11-24; machine: 2-core CPU, 24 GiB, Python 3.11, mxnet 1.9.1 (MKLDNN); OMP_NUM_THREADS={threads}. "
        f"Load average {load0:.2f} before and {load1:.2f} after: the machine was shared with concurrent jobs, so "
        "absolute times are noisy; methods were measured round-robin in one process "
        f"({args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up, best round shown).", "",
        f"### Step time (student {args.student}, teacher {args.teacher} at {args.size}x{args.size}, emb {args.emb}, "
        f"{args.classes} classes, batch {args.batch}, hybridized, SGD)", "",
        "| method | student@input | ms / step | vs none | loss parts | all rounds (ms) |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for label_, student, ms, ratio, parts, all_ in rows:
        lines.append(f"| {label_} | {student} | {ms:.0f} | {ratio:.2f}x | {parts} | {all_} |")
    lines += ["",
              "lowres_kt / lowres_ktkd: knowledge transfer needs the teacher's architecture, so their student is the "
              f"teacher network at half resolution, not {args.student}; their ratio is still against `none` "
              f"({args.student} at {args.size}).", "",
              "### Tiny run: every term goes down (25 SGD steps, lr 0.005, momentum 0.9; tiny r18 teacher -> tiny "
              "mfn student, 16 images 32x32, 4 classes; softmax_weight=0.1, l2_lambda=0.1, hint_lambda=10, "
              "kd_emb_lambda=5)", "",
              "| method | loss part: first -> last (mean per sample, weighted) | all decrease |",
              "| --- | --- | --- |"]
    for name, terms, ok in tiny:
        lines.append(f"| {name} | {terms} | {ok} |")
    lines += ["", f"Run time {elapsed:.0f} s."]
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    if not args.no_doc:
        write_marked_section("bench_distill", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
