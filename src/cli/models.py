"""`shrinkteanet models`: parameters, MFLOPs and stage shapes of every registered network
(``shrinkteanet.symbols.registry``), with its report name, InsightFace compatibility and the
paper's parameter count."""
from shrinkteanet.cli import add_json_arg
from shrinkteanet.core.errors import InputError

ORDER = 5
#: MS1M-ArcFace (InsightFace ``emore``) identities: the classifier the paper's teachers train with
DEFAULT_NUM_CLASSES = 85742
#: 112 and the low resolutions of the low-resolution recipes (config ``lowres_size``)
DEFAULT_SIZES = "112,56,28"


def register(sub):
    from shrinkteanet.symbols import registry

    p = sub.add_parser("models", help="parameters, MFLOPs and stage output shapes of every network")
    p.add_argument("--networks", default=None,
                   help=f"comma-separated subset of {', '.join(registry.NETWORKS)} (default: all)")
    p.add_argument("--emb-size", type=int, default=512, help="embedding size (default 512)")
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES,
                   help=f"identities of the fc7 classifier (default {DEFAULT_NUM_CLASSES}, MS1M-ArcFace)")
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"input resolutions for MFLOPs and stage shapes (default {DEFAULT_SIZES})")
    add_json_arg(p)
    p.set_defaults(func=run)


def _parse_sizes(text):
    try:
        sizes = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(s < 16 for s in sizes):
        raise InputError(f"--sizes needs resolutions >= 16 (four halvings), got {text!r}")
    return sizes


def describe(network, emb_size=512, num_classes=DEFAULT_NUM_CLASSES, sizes=(112,)):
    """Report fields of one network: parameters (embedding part at 112x112 and the
    ``num_classes`` x ``emb_size`` fc7 classifier, InsightFace's margin head without
    bias), multiply-add MFLOPs and (C, H, W) stage outputs per input size."""
    from shrinkteanet import symbols
    from shrinkteanet.symbols import measure

    spec = symbols.get_spec(network)
    row = {"display_name": spec.display_name, "insightface_compatible": spec.insightface,
           "paper_params_m": spec.paper_params_m, "emb_size": emb_size, "params_embedding": None,
           "params_classifier": num_classes * emb_size,
           "params_embedding_by_size": {}, "mflops": {}, "stage_shapes": {}}
    for size in sizes:
        split = symbols.get_stages(network, emb_size, image_size=size)
        emb, _ = measure.count_params(split.full, size)
        row["params_embedding_by_size"][str(size)] = emb
        row["mflops"][str(size)] = measure.count_flops(split.full, size) / 1e6
        row["stage_shapes"][str(size)] = [list(s) for s in split.stage_shapes(size)]
    if "112" in row["params_embedding_by_size"]:
        row["params_embedding"] = row["params_embedding_by_size"]["112"]
    else:
        row["params_embedding"] = measure.count_params(symbols.get_symbol(network, emb_size), 112)[0]
    return row


def _select_networks(text):
    """The registered networks named by ``--networks`` (all of them when empty), in that order."""
    from shrinkteanet import symbols

    if not text:
        return list(symbols.NETWORKS)
    networks = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in networks if n not in symbols.REGISTRY]
    if unknown:
        raise InputError(f"--networks: unknown {', '.join(unknown)} (choose from {', '.join(symbols.NETWORKS)})")
    return networks


def _print_table(report, emb_size, num_classes, sizes):
    print(f"embedding {emb_size}, classifier {num_classes} x {emb_size}; "
          f"params in millions (embedding part at 112x112; paper = Table 2 of ShrinkTeaNet), "
          f"MFLOPs = conv+FC multiply-adds, IF = InsightFace-compatible names and shapes")
    width = max(len(row["display_name"]) for row in report.values()) + 2
    head = f"{'network':<8}{'name':<{width}}{'params':>9}{'paper':>7}{'fc7':>9}{'IF':>4}"
    head += "".join(f"{'MFLOPs@' + str(s):>14}" for s in sizes)
    head += "  stage outputs @" + str(sizes[0])
    print(head)
    for n, row in report.items():
        paper = f"{row['paper_params_m']:.2f}" if row["paper_params_m"] is not None else "-"
        line = f"{n:<8}{row['display_name']:<{width}}{row['params_embedding'] / 1e6:>9.3f}{paper:>7}"
        line += f"{row['params_classifier'] / 1e6:>9.2f}"
        line += f"{'yes' if row['insightface_compatible'] else '-':>4}"
        line += "".join(f"{row['mflops'][str(s)]:>14.1f}" for s in sizes)
        line += "  " + " ".join("x".join(str(v) for v in shp) for shp in row["stage_shapes"][str(sizes[0])])
        print(line)


def run(args):
    from shrinkteanet.core.utils import write_json

    sizes = _parse_sizes(args.sizes)
    if args.emb_size < 1 or args.num_classes < 1:
        raise InputError("--emb-size and --num-classes must be positive")
    networks = _select_networks(args.networks)
    report = {n: describe(n, args.emb_size, args.num_classes, sizes) for n in networks}
    _print_table(report, args.emb_size, args.num_classes, sizes)
    if args.json:
        write_json(args.json, report)
    return 0
