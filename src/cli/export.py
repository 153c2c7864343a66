"""`shrinkteanet export`: ONNX (checked with onnxruntime), MKLDNN-fused and INT8 MXNet models."""
from shrinkteanet.cli import add_json_arg

ORDER = 60


def register(sub):
    p = sub.add_parser(
        "export",
        help="ONNX (checked with onnxruntime), MKLDNN-fused and INT8 CPU models of a checkpoint",
        description="Export a trained embedding network for CPU deployment. Each output is checked: the ONNX file "
        "against MXNet with onnxruntime, the MXNet models by loading them back and running them twice.",
    )
    p.add_argument("--model", required=True, metavar="PREFIX,EPOCH", help="checkpoint to export")
    p.add_argument("--onnx", metavar="OUT.onnx", default=None, help="write ONNX here (dynamic batch axis)")
    p.add_argument("--mkldnn", metavar="PREFIX", nargs="?", const="", default=None,
                   help="write the MKLDNN-fused fp32 model (default prefix: PREFIX-mkldnn)")
    p.add_argument("--int8", metavar="PREFIX", nargs="?", const="", default=None,
                   help="write the INT8 model (default prefix: PREFIX-int8); needs --calib")
    p.add_argument("--calib", metavar="FILE", default=None, help="calibration images: a .rec set (dir/.rec) or a .bin")
    p.add_argument("--calib-mode", choices=("naive", "entropy"), default="naive",
                   help="naive = layer min/max, entropy = KL-optimal thresholds (default naive)")
    p.add_argument("--num-calib", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--granularity", choices=("channel-wise", "tensor-wise"), default="channel-wise",
                   help="INT8 weight scales (default channel-wise)")
    p.add_argument("--eval-bin", metavar="FILE.bin", default=None,
                   help="verification set for the INT8 accuracy change (default: --calib when it is a .bin)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the one the weights fit)")
    p.add_argument("--tolerance", type=float, default=None, help="ONNX max abs diff allowed (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=32)
    add_json_arg(p)
    p.set_defaults(func=run, outputs=outputs)


def out_prefixes(args):
    """``(mkldnn, int8)`` output prefixes (``PREFIX-mkldnn``/``PREFIX-int8`` when the flag has no
    value; None when not asked for)."""
    from shrinkteanet.core.utils import parse_model_arg

    prefix, _ = parse_model_arg(args.model)
    return ((args.mkldnn or f"{prefix}-mkldnn") if args.mkldnn is not None else None,
            (args.int8 or f"{prefix}-int8") if args.int8 is not None else None)


def outputs(args):
    """``deploy.export.export_outputs`` of the command line, and its ``--json``."""
    from shrinkteanet.cli import json_output
    from shrinkteanet.core.utils import parse_model_arg
    from shrinkteanet.deploy.export import export_outputs

    mkldnn, int8 = out_prefixes(args)
    outs, inputs = export_outputs(parse_model_arg(args.model), onnx=args.onnx, mkldnn=mkldnn, int8=int8,
                                  calib=args.calib, eval_bin=args.eval_bin)
    return outs + [json_output(args)], inputs


def run(args):
    from shrinkteanet.deploy import export
    from shrinkteanet.core.errors import InputError
    from shrinkteanet.core.utils import parse_model_arg, write_json

    prefix, epoch = parse_model_arg(args.model)
    if not (args.onnx or args.mkldnn is not None or args.int8 is not None):
        raise InputError("nothing to export: give --onnx OUT.onnx, --mkldnn [PREFIX] and/or --int8 [PREFIX]")
    if args.int8 is not None and not args.calib:
        raise InputError("--int8 needs --calib FILE (.rec set or .bin) for calibration images")
    if args.num_calib < 1:
        raise InputError(f"--num-calib must be at least 1, got {args.num_calib}")
    mkldnn, int8 = out_prefixes(args)
    report = export.export_all(
        (prefix, epoch),
        onnx=args.onnx,
        mkldnn=mkldnn,
        int8=int8,
        calib=args.calib,
        calib_mode=args.calib_mode,
        num_calib=args.num_calib,
        eval_bin=args.eval_bin,
        image_size=args.image_size,
        tolerance=export.ONNX_TOLERANCE if args.tolerance is None else args.tolerance,
        granularity=args.granularity,
        batch_size=args.batch_size,
    )
    print(f"model {report['model']}: input {report['image_size']}x{report['image_size']}, embedding {report['emb_size']}")
    ok = True
    if "onnx" in report:
        o = report["onnx"]
        verdict = "parity OK" if o["ok"] else "PARITY FAILED"
        print(f"onnx    {o['path']} (opset {o['opset']}): onnxruntime vs mxnet max abs diff {o['max_abs_diff']:.3g} "
              f"on a batch of {o['batch']} (tolerance {o['tolerance']:g}): {verdict}")
        ok &= o["ok"]
    if "mkldnn" in report:
        m = report["mkldnn"]
        print(f"mkldnn  {m['prefix']}-symbol.json / -{m['epoch']:04d}.params: max abs diff {m['max_abs_diff']:.3g} "
              f"vs unfused, second forward {'OK' if m['repeat_ok'] else 'FAILED'}")
        ok &= m["repeat_ok"]
    if "int8" in report:
        q = report["int8"]
        line = (f"int8    {q['prefix']}-symbol.json / -{q['epoch']:04d}.params: {q['calib_mode']} calibration on "
                f"{q['num_calib']} images of {q['calib']}; cosine to fp32 mean {q['cosine_mean']:.5f} "
                f"min {q['cosine_min']:.5f}, second forward {'OK' if q['repeat_ok'] else 'FAILED'}")
        print(line)
        if "accuracy_change" in q:
            print(f"        accuracy on {q['eval_bin']}: fp32 {100 * q['accuracy_fp32']:.2f}%, "
                  f"int8 {100 * q['accuracy_int8']:.2f}% (change {100 * q['accuracy_change']:+.2f} points)")
        ok &= q["repeat_ok"]
    if args.json:
        write_json(args.json, report)
    return 0 if ok else 1
