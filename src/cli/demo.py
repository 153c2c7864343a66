"""`shrinkteanet demo` and `shrinkteanet reproduce`: the whole method end to end on this machine
(synthetic data -> teacher -> students self/L2/ShrinkTeaNet -> all evaluations -> REPORT.md)."""
from shrinkteanet.cli import add_json_arg

ORDER = 60


def _seeds(text):
    from shrinkteanet.errors import InputError

    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def _common(p, out_default, seeds_default):
    p.add_argument("--out", default=out_default, metavar="DIR", help=f"work folder (default {out_default})")
    p.add_argument("--scale", default=None,
                   help="tiny | small (default: $SHRINKTEANET_DEMO_SCALE or small)")
    p.add_argument("--seeds", default=seeds_default, help=f"student seeds, comma-separated (default {seeds_default})")
    p.add_argument("--students", default=None, help="student networks, comma-separated (default: the scale's mfn,mfnr)")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    p.add_argument("--dry-run", action="store_true", help="print the commands of data and teacher stages only")
    add_json_arg(p)


def register(sub):
    p = sub.add_parser("demo", help="synthetic data -> teacher -> students (self, L2, ShrinkTeaNet) -> "
                                    "all evaluations -> REPORT.md")
    _common(p, "work/demo", "0")
    p.add_argument("--only-data", action="store_true", help="only make the synthetic set (OUT/synth)")
    p.add_argument("--recipe-extra", default=None, metavar="NETWORK",
                   help="print the key=value overrides that run a recipe of NETWORK (r90, mfn, mfnr, mv1, mv2, "
                        "lowres) at this scale, and exit")
    p.set_defaults(func=run_demo)
    r = sub.add_parser("reproduce", help="the demo with several seeds per method: mean, std and whether the "
                                         "paper's ordering holds")
    _common(r, "work/reproduce-small", "0,1,2")
    r.set_defaults(func=run_reproduce)


def _run(args, reproduce):
    import json
    import os

    from shrinkteanet import demo
    from shrinkteanet.utils import write_json

    scale = demo.get_scale(args.scale)
    students = [s.strip() for s in args.students.split(",") if s.strip()] if args.students else None
    fn = demo.reproduce_small if reproduce else demo.run_demo
    path = fn(args.out, scale=scale, seeds=_seeds(args.seeds), students=students, force=args.force,
              dry_run=args.dry_run)
    if path is None:
        print("dry run: nothing trained")
        return 0
    with open(os.path.join(args.out, "demo.json")) as f:
        meta = json.load(f)
    print(f"\n{meta['title']}: scale {meta['scale']}, {len(meta['runs'])} student runs, "
          f"{meta['elapsed_s'] / 60:.1f} min")
    with open(path) as f:
        text = f.read()
    # the table and the ordering verdict are the summary a person reads first
    start = text.find("## Table 2 layout")
    print(text[start:text.find("## Plots")].strip())
    print(f"report: {path}")
    if args.json:
        write_json(args.json, dict(meta, report=path))
    return 0


def run_demo(args):
    if args.recipe_extra:
        from shrinkteanet import demo

        print(" ".join(demo.recipe_extra(demo.get_scale(args.scale), args.recipe_extra)))
        return 0
    if args.only_data:
        from shrinkteanet import demo

        path = demo.prepare_data(args.out, demo.get_scale(args.scale))
        print(f"synthetic data: {path}")
        return 0
    return _run(args, reproduce=False)


def run_reproduce(args):
    return _run(args, reproduce=True)
