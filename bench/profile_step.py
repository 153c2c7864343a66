"""Profile training steps of the study's runs with MXNet's profiler (aggregate operator table)
and write the breakdown to the "profile" section of docs/benchmarks.md.

Run: ``python bench/profile_step.py DATA_DIR TEACHER_PREFIX,EPOCH [--method stn_w10] [--steps 30]``
(DATA_DIR: a study synthetic set, e.g. work/reproduce-small/synth).  Steps 1-10 warm up
(hybridize, MKLDNN primitive creation); the next ``--steps`` are profiled.
"""
import argparse
import os
import platform
import re
import tempfile
import time

import _common


class _Profile:
    """Training callback: profile steps ``start+1 .. start+steps``, then stop the run."""

    def __init__(self, start, steps, path):
        self.start, self.stop_at, self.path = start, start + steps, path
        self.t0 = self.t1 = 0.0

    def __call__(self, info):
        import mxnet as mx

        from shrinkteanet.training.fit import StopTraining

        if info["step"] == self.start:
            mx.nd.waitall()
            mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=self.path)
            mx.profiler.set_state("run")
            self.t0 = time.time()
        elif info["step"] == self.stop_at:
            mx.nd.waitall()
            self.t1 = time.time()
            mx.profiler.set_state("stop")
            raise StopTraining()


def parse_aggregate(text):
    """``[(operator, calls, total ms)]`` from ``mx.profiler.dumps()``'s aggregate table."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\S+)\s+(\d+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s*$", line)
        if m:
            rows.append((m.group(1), int(m.group(2)), float(m.group(3))))
    merged = {}
    for name, calls, total in rows:
        c, t = merged.get(name, (0, 0.0))
        merged[name] = (c + calls, t + total)
    return sorted(((n, c, t) for n, (c, t) in merged.items()), key=lambda r: -r[2])


def main():
    import mxnet as mx

    from shrinkteanet.study import demo
    from shrinkteanet.training.config import config_by_name
    from shrinkteanet.training.train import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("teacher")
    ap.add_argument("--method", default="stn_w10")
    ap.add_argument("--network", default="mfnr")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = ap.parse_intermixed_args()
    scale = demo.get_scale("study")
    suffix, extra = demo.study_methods()[args.method]
    overrides = [*demo.student_overrides(scale, args.network), *extra, f"data_dir={args.data}",
                 f"teacher={args.teacher}", "out=", *args.overrides]
    cfg = config_by_name(f"{args.network}_{suffix}", overrides)
    trace = os.path.join(tempfile.mkdtemp(prefix="profile_"), "profile.json")
    prof = _Profile(10, args.steps, trace)
    train(cfg, [mx.cpu()], callbacks=[prof])
    table = parse_aggregate(mx.profiler.dumps(reset=True))
    total = sum(t for _, _, t in table)
    ms_step = 1000 * (prof.t1 - prof.t0) / args.steps
    lines = [f"## Profile of one training step: {args.network} {args.method} ({time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, "
             f"load {_common.loadavg():.1f})\n",
             f"{args.steps} steps after 10 warm-up steps, batch {cfg.batch_size}, {cfg.image_size}x{cfg.image_size}: "
             f"**{ms_step:.1f} ms per step** wall; operator time below (MXNet profiler, aggregate, all "
             f"operators of forward and backward, per step).\n",
             "| operator | calls/step | ms/step | share |", "|---|---|---|---|"]
    for name, calls, t in table[:15]:
        lines.append(f"| {name} | {calls / args.steps:.1f} | {t / args.steps:.2f} | {100 * t / total:.1f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        _common.write_marked_section(f"profile_{args.method}", text)


if __name__ == "__main__":
    main()
