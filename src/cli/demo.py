"""`shrinkteanet demo` and `shrinkteanet reproduce`: the whole study end to end on this machine
(synthetic data -> teacher -> students of every method and seed -> all evaluations -> REPORT.md
and study.json), stages side by side on every core."""
from shrinkteanet.cli import add_json_arg

ORDER = 60


def _seeds(text):
    from shrinkteanet.core.errors import InputError

    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def _jobs(text):
    from shrinkteanet.core.errors import InputError

    try:
        n = int(text)
    except ValueError:
        raise InputError(f"--jobs must be a positive integer, got {text!r}") from None
    if n < 1:
        raise InputError(f"--jobs must be a positive integer, got {text!r}")
    return n


def _common(p, out_default, scale_default):
    p.add_argument("--out", default=out_default, metavar="DIR", help=f"work folder (default {out_default})")
    p.add_argument("--scale", default=None,
                   help=f"tiny | small | study | fair | fair_tiny (default: $SHRINKTEANET_DEMO_SCALE or {scale_default}; "
                        "--part: fair)")
    p.add_argument("--seeds", default=None, help="student seeds, comma-separated (default: the scale's)")
    p.add_argument("--students", default=None, help="student networks, comma-separated (default: the scale's)")
    p.add_argument("--methods", default=None, help="methods, comma-separated (default: the scale's; "
                                                   "names as in shrinkteanet.study.demo.study_methods())")
    p.add_argument("--jobs", default=None, type=str, help="stages side by side (default: one per core)")
    p.add_argument("--threads", default=0, type=int, help="OpenMP threads per stage (default: cores // jobs)")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    p.add_argument("--dry-run", action="store_true", help="print every stage's commands and run nothing")
    add_json_arg(p)


def register(sub):
    p = sub.add_parser("demo", help="synthetic data -> teacher -> students (self, L2, ShrinkTeaNet) -> "
                                    "all evaluations -> REPORT.md")
    _common(p, "work/demo", "small")
    p.add_argument("--only-data", action="store_true", help="only make the synthetic set (OUT/synth)")
    p.add_argument("--recipe-extra", default=None, metavar="NETWORK",
                   help="print the key=value overrides that run a recipe of NETWORK (r90, mfn, mfnr, mv1, mv2, "
                        "lowres) at this scale, and exit")
    p.set_defaults(func=run_demo)
    r = sub.add_parser("reproduce", help="the demo with several seeds per method: mean, std and whether the "
                                         "paper's ordering holds")
    _common(r, "work/reproduce-small", "study")
    r.add_argument("--part", default=None, help="the fair study (issue 26, default scale fair): calibration, "
                                                "tuning, main, efficiency, comma-separated; run in that order; --out default "
                                                "work/reproduce-fair")
    r.add_argument("--resume", action="store_true", help="a train stage killed midway continues from its last "
                                                         "checkpoint (train --resume) instead of starting afresh")
    r.add_argument("--merge", action="append", default=[], metavar="STUDY_JSON",
                   help="a part's study.json from another work folder (repeatable): its runs fill in the planned "
                        "runs this folder has not finished; refused unless its scale_fingerprint is this scale's")
    r.add_argument("--report-only", action="store_true", help="run nothing: write study.json and REPORT.md from "
                                                              "the finished (and --merge) runs")
    r.set_defaults(func=run_reproduce)


def _run(args, reproduce):
    import json
    import os

    from shrinkteanet.study import demo
    from shrinkteanet.core.utils import write_json

    scale = demo.get_scale(args.scale or (None if not reproduce or os.environ.get(demo.SCALE_ENV) else "study"))
    students = _names(args.students)
    fn = demo.reproduce_small if reproduce else demo.run_demo
    path = fn(args.out, scale=scale, seeds=_seeds(args.seeds) if args.seeds else None, students=students,
              methods=_names(args.methods), force=args.force, dry_run=args.dry_run,
              jobs=_jobs(args.jobs) if args.jobs else None, threads=args.threads)
    if path is None:
        print("dry run: nothing trained")
        return 0
    with open(os.path.join(args.out, "demo.json")) as f:
        meta = json.load(f)
    print(f"\n{meta['title']}: scale {meta['scale']}, {len(meta['runs'])} student runs, "
          f"{meta['elapsed_s'] / 60:.1f} min")
    with open(path) as f:
        text = f.read()
    # the table, the paired differences and the verdicts are the summary a person reads first
    start = text.find("## Table 2 layout")
    print(text[start:text.find("## Distillation weight ablation")].strip())
    print(f"report: {path}")
    if args.json:
        write_json(args.json, dict(meta, report=path))
    return 0


def _names(text):
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def run_demo(args):
    if args.recipe_extra:
        from shrinkteanet.study import demo

        print(" ".join(demo.recipe_extra(demo.get_scale(args.scale), args.recipe_extra)))
        return 0
    if args.only_data:
        from shrinkteanet.study import demo

        path = demo.prepare_data(args.out, demo.get_scale(args.scale))
        print(f"synthetic data: {path}")
        return 0
    return _run(args, reproduce=False)


def run_reproduce(args):
    if args.part:
        return _run_fair(args)
    given = [f for f, v in (("--resume", args.resume), ("--merge", args.merge), ("--report-only", args.report_only)) if v]
    if given:
        from shrinkteanet.core.errors import InputError

        raise InputError(f"{given[0]} belongs to the fair study's parts: give --part too")
    return _run(args, reproduce=True)


def _run_fair(args):
    """``reproduce --part ...``: the fair study's parts, then the merged REPORT.md."""
    from shrinkteanet.study import demo, fair

    parts = fair.parse_parts(args.part)
    scale = demo.get_scale(args.scale or "fair")
    out = args.out if args.out != "work/reproduce-small" else "work/reproduce-fair"
    path = fair.run_fair(out, scale, parts, students=_names(args.students),
                         seeds=_seeds(args.seeds) if args.seeds else None, methods=_names(args.methods),
                         resume=args.resume, jobs=_jobs(args.jobs) if args.jobs else None, threads=args.threads,
                         force=args.force, dry_run=args.dry_run, merge=args.merge, report_only=args.report_only)
    if path is None:
        print("dry run: nothing trained")
        return 0
    with open(path) as f:
        text = f.read()
    print(text[text.find("## Parts"):text.find("\n## ", text.find("## Parts") + 3)].strip())
    print(f"report: {path}")
    if args.json:
        from shrinkteanet.core.utils import write_json

        write_json(args.json, dict(report=path, parts=parts, scale=scale["name"]))
    return 0
