"""`shrinkteanet config NAME [key=value ...]`: resolve and print a training config.

The recipes' ``--dry-run`` calls this to prove that the config they would
train with is valid: unknown keys and mistyped values, and every check of
``training.validate.validate`` that ``train`` makes before reading data (names, stages, sizes,
the teacher against its checkpoint, class counts), fail with exit 2.  The teacher resolved from
its checkpoint is printed in the config.  ``--list`` shows the
named configs, ``--methods`` the methods of the registry (``shrinkteanet.methods.base.registry``) with
their variants and needs; both tables are derived from the method modules."""
from shrinkteanet.cli import add_json_arg

ORDER = 20


def register(sub):
    p = sub.add_parser("config", help="resolve a named training config with key=value overrides and print it")
    p.add_argument("name", nargs="?", help="named config (omit with --list)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--list", action="store_true", help="list the named configs")
    p.add_argument("--methods", action="store_true", help="list the distillation methods and their variants")
    p.add_argument("--teacher-pending", action="store_true",
                   help="a method's teacher checkpoint is not trained yet: check the rest (recipes' --dry-run)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args):
    import json

    from shrinkteanet.training import config
    from shrinkteanet.training.schedule import describe_schedule, schedule_record
    from shrinkteanet.core.errors import InputError
    from shrinkteanet.core.utils import write_json

    if args.methods:
        print_methods()
        return 0
    if args.list or not args.name:
        for name, rows in sorted(config.named_configs().items()):
            print(f"{name:<20} network={rows[0]} dataset={rows[1]} loss={rows[2]} distill={rows[3]}")
        if not args.list:
            raise InputError("give a config NAME (or --list)")
        return 0
    cfg = config.config_by_name(args.name, args.overrides)
    from shrinkteanet.training.validate import validate

    # the checks of `train` before it reads data (names, stages, sizes, the teacher checkpoint)
    validate(cfg, teacher_pending=args.teacher_pending)
    lr_steps = describe_schedule(schedule_record(cfg))  # the lr steps this batch size trains with
    print(json.dumps(cfg, indent=2, sort_keys=True))
    print(lr_steps)
    if args.json:
        write_json(args.json, cfg)
    return 0


def print_methods():
    """One line per method: name, its DISTILL variants, what it needs, its own hooks, its summary."""
    from shrinkteanet.methods.base import registry

    for d in registry.methods():
        needs = ",".join(d.needs.as_dict()) or "-"
        variants = ",".join(v.name for v in d.variants)
        hooks = ",".join(d.hooks) or "-"
        print(f"{d.name:<12} variants={variants:<16} needs={needs:<20} hooks={hooks:<40} {d.summary}")
