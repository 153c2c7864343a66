"""`shrinkteanet eval verification|megaface|ijb`: InsightFace's protocols, with a report
folder (JSON + Markdown + PNG) per run."""
import os

from shrinkteanet.cli import GPUS_HELP_ONE, add_json_arg

ORDER = 40


#: protocol -> the files its report folder gets (``eval.report``), checked before anything is embedded
REPORT_FILES = {
    "verification": ("verification.json", "verification.md", "roc.png"),
    "megaface": ("megaface.json", "megaface.md", "rank1_vs_distractors.png", "cmc.png"),
    "ijb": ("ijb.json", "ijb.md", "roc.png"),
}


def outputs(args):
    """``--out`` (the report folder) and ``--json`` of any protocol; inputs: the checkpoint and
    the verification sets (``cli.main`` checks them before the model is loaded)."""
    from shrinkteanet.cli import json_output, model_inputs
    from shrinkteanet.core.outputs import Input, folder_output

    protocol = args.eval_command
    out = folder_output("--out", args.out, names=REPORT_FILES[protocol])
    inputs = model_inputs(args.model)
    if protocol == "verification":
        inputs += [Input(f"--targets {t}", os.path.join(args.data_dir, f"{t}.bin")) for t in _targets(args)]
    return [out, json_output(args)], inputs


def _targets(args):
    return [t.strip() for t in args.targets.split(",") if t.strip()]


def _common(p, out_default):
    p.add_argument("--model", required=True, metavar="PREFIX,EPOCH", help="checkpoint (its fc1 output is used)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None,
                   help="input side (default: the one the weights fit, as embed and export detect it)")
    p.add_argument("--gpus", default=None, help=f"GPU id (the first of a list is used; {GPUS_HELP_ONE})")
    p.add_argument("--no-mkldnn", action="store_true", help="plain static graph instead of MKLDNN partitioning")
    p.add_argument("--out", default=out_default, metavar="DIR", help=f"report folder (default {out_default})")
    add_json_arg(p)


def register(sub):
    ev = sub.add_parser("eval", help="verification (.bin), MegaFace challenge 1, IJB-B/C")
    es = ev.add_subparsers(dest="eval_command", metavar="PROTOCOL")
    es.required = True

    v = es.add_parser("verification", help="10-fold accuracy and TAR@FAR=1e-3 on InsightFace .bin sets")
    v.add_argument("--data-dir", required=True, metavar="DIR", help="folder holding TARGET.bin files")
    v.add_argument("--targets", default="lfw,cfp_fp,agedb_30", help="comma-separated .bin names")
    v.add_argument("--nfolds", type=int, default=10)
    v.add_argument("--tar-tie-order", choices=["legacy", "stable"], default="legacy",
                   help="order of tied FAR values for TAR@FAR=1e-3: legacy = SciPy < 1.6 (InsightFace's era), "
                        "stable = SciPy 1.6-1.8")
    _common(v, "work/eval/verification")
    v.set_defaults(func=run_verification, outputs=outputs)

    m = es.add_parser("megaface", help="devkit features, noise cleaning, built-in challenge-1 identification")
    m.add_argument("--megaface-root", required=True, metavar="DIR",
                   help="folder with facescrub_images/, megaface_images/, templatelists/")
    m.add_argument("--algo", default="shrinkteanet", help="feature file suffix _<algo>.bin")
    m.add_argument("--set", type=int, default=1, dest="set_no", help="devkit distractor list set number")
    m.add_argument("--sizes", default=None, help="distractor set sizes (default: every list present)")
    m.add_argument("--facescrub-noises", default=None, help="default ROOT/facescrub_noises.txt when present")
    m.add_argument("--megaface-noises", default=None, help="default ROOT/megaface_noises.txt when present")
    m.add_argument("--allow-missing", action="store_true", help="leave out missing images instead of stopping")
    m.add_argument("--devkit", default=None, metavar="PATH", help="also run the official devkit found at PATH")
    m.add_argument("--block", type=int, default=8192, help="distractors per matrix-product block")
    m.add_argument("--seed", type=int, default=0, help="seed of the noise-cleaning jitter")
    _common(m, "work/eval/megaface")
    m.set_defaults(func=run_megaface, outputs=outputs)

    j = es.add_parser("ijb", help="IJB-B/C 1:1 TAR@FAR (and 1:N when its meta files are present)")
    j.add_argument("--image-path", required=True, metavar="ROOT/IJBC", help="folder with meta/ and loose_crop/")
    j.add_argument("--target", default="IJBC", choices=["IJBC", "IJBB"])
    j.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    j.add_argument("--no-norm-score", action="store_true", help="L2-normalise image features before pooling")
    j.add_argument("--no-detector-score", action="store_true", help="do not weight by the faceness score")
    j.add_argument("--allow-missing", action="store_true", help="leave out missing images instead of stopping")
    _common(j, "work/eval/ijb")
    j.set_defaults(func=run_ijb, outputs=outputs)


def _embedder(args):
    from shrinkteanet.eval.embed import Embedder
    from shrinkteanet.core.utils import get_contexts, parse_model_arg

    ctx = get_contexts(args.gpus, one=True)[0]
    return Embedder(parse_model_arg(args.model), ctx=ctx, batch_size=args.batch_size, image_size=args.image_size,
                    mkldnn=not args.no_mkldnn)


def _finish(args, fields, md_path):
    from shrinkteanet.core.utils import write_json

    if args.json:
        write_json(args.json, fields)
    print(f"report: {md_path}")
    return 0


def run_verification(args):
    from shrinkteanet.core.errors import InputError
    from shrinkteanet.eval import report
    from shrinkteanet.eval.verification import run_targets

    targets = _targets(args)
    if not targets:
        raise InputError("--targets is empty")
    if args.nfolds < 2:
        # one "fold" tunes the threshold on the test pairs themselves (InsightFace's LFold(1))
        raise InputError(f"--nfolds {args.nfolds}: needs 2 or more folds (the threshold of each test fold is chosen "
                         "on the others)")
    for t in targets:
        path = os.path.join(args.data_dir, f"{t}.bin")
        if not os.path.isfile(path):
            raise InputError(f"{path}: verification set not found (target {t!r})")
    res = run_targets(_embedder(args), args.data_dir, targets, args.nfolds, args.tar_tie_order)
    source = report.model_source(args.model)
    fields = {t: dict(f, nfolds=args.nfolds, model=source) for t, (f, _) in res.items()}
    rows = [[t, f["accuracy"], f["accuracy_std"], f["tar"], f["tar_std"], f["far"], f["threshold"], f["xnorm"]]
            for t, f in fields.items()]
    table = report.md_table(["target", "accuracy %", "std %", "TAR %", "TAR std %", "FAR %", "threshold", "XNorm"],
                            rows)
    os.makedirs(args.out, exist_ok=True)
    report.plot_curves(os.path.join(args.out, "roc.png"), {t: (c["fpr"], c["tpr"]) for t, (_, c) in res.items()},
                       "false accept rate", "true accept rate", "Verification ROC (mean of test folds)", logx=True,
                       ylim=(0, 1.01))
    md = report.write_report(args.out, "verification", fields, f"Verification: {args.model}", [
        (f"Results ({args.nfolds}-fold, InsightFace protocol)", table),
        ("Plots", "![ROC](roc.png)\n"),
    ], notes=[report.model_note(source),
              f"accuracy: best squared-L2 threshold of the {args.nfolds - 1} training folds applied to the test fold",
              "TAR at FAR=1e-3: thresholds 0..4 step 0.001, interpolated as InsightFace's calculate_val; "
              f"tied FAR values in {args.tar_tie_order} order ("
              + ("SciPy < 1.6, InsightFace's era" if args.tar_tie_order == "legacy" else "SciPy 1.6-1.8") + ")",
              "threshold: mean over folds of the best accuracy threshold (squared L2, normalised embeddings)"])
    for t, f in fields.items():
        print(f"{t:>10}: accuracy {100 * f['accuracy']:.2f}+-{100 * f['accuracy_std']:.2f}%  "
              f"TAR {100 * f['tar']:.2f}+-{100 * f['tar_std']:.2f}% @ FAR {100 * f['far']:.3f}%  "
              f"XNorm {f['xnorm']:.3f}")
    return _finish(args, fields, md)


def run_megaface(args):
    from shrinkteanet.eval import megaface, report

    root = args.megaface_root
    fs_noise = args.facescrub_noises
    if fs_noise is None and os.path.isfile(os.path.join(root, "facescrub_noises.txt")):
        fs_noise = os.path.join(root, "facescrub_noises.txt")
    mf_noise = args.megaface_noises
    if mf_noise is None and os.path.isfile(os.path.join(root, "megaface_noises.txt")):
        mf_noise = os.path.join(root, "megaface_noises.txt")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    emb = _embedder(args)
    gen = megaface.generate(emb, root, args.out, args.algo, args.set_no, sizes, args.allow_missing, fs_noise,
                            mf_noise, args.seed, image_size=emb.image_size)
    fields, curves = megaface.evaluate_generated(gen, block=args.block)
    fields["model"] = report.model_source(args.model)
    if args.devkit:
        megaface.run_devkit(args.devkit, args.out, args.algo, curves["sizes"],
                            os.path.join(root, "templatelists", megaface.FACESCRUB_LIST),
                            os.path.join(args.out, "devkit_results"))
    rows = [[s, fields["rank1"][str(s)]] for s in curves["sizes"]]
    report.plot_curves(os.path.join(args.out, "rank1_vs_distractors.png"),
                       {"rank-1": (curves["sizes"], curves["rank1"])}, "# distractors", "identification rate",
                       "MegaFace challenge 1: rank-1", logx=True, ylim=(0, 1.01))
    report.plot_curves(os.path.join(args.out, "cmc.png"),
                       {f"{curves['sizes'][-1]} distractors": (range(1, len(curves["cmc"]) + 1), curves["cmc"])},
                       "rank", "identification rate", "MegaFace challenge 1: CMC", ylim=(0, 1.01))
    md = report.write_report(args.out, "megaface", fields, f"MegaFace challenge 1: {args.model}", [
        ("Rank-1 identification", report.md_table(["# distractors", "rank-1 %"], rows)),
        ("Verification", report.md_table(["FAR", "TAR %"], [["1e-6", fields["tar_at_far_1e-06"]]])),
        ("Plots", "![rank-1](rank1_vs_distractors.png) ![CMC](cmc.png)\n"),
    ], notes=[f"probes: {fields['num_probes']}, trials: {curves['num_trials']}, "
              f"noisy probes cleaned: {gen['num_noisy_probes']}, noisy distractors dropped: "
              f"{gen['num_noisy_distractors']}, missing images: {gen['num_missing']}",
              "devkit features: features/ (raw, 512-d) and features_clean/ (InsightFace remove_noises, 513-d)",
              report.model_note(fields["model"])])
    for s in curves["sizes"]:
        print(f"rank-1 @ {s:>7} distractors: {100 * fields['rank1'][str(s)]:.2f}%")
    print(f"TAR @ FAR=1e-6: {100 * fields['tar_at_far_1e-06']:.2f}%  ({fields['num_probes']} probes)")
    return _finish(args, fields, md)


def run_ijb(args):
    from shrinkteanet.eval import ijb, report

    fields, curves, extra = ijb.run(_embedder(args), args.image_path, args.target, not args.no_flip,
                                    not args.no_norm_score, not args.no_detector_score, args.allow_missing)
    tars = fields["tar_at_far"]
    table = report.md_table(["method"] + list(tars) + ["AUC %"],
                            [[f"{os.path.basename(args.model)}-{fields['target']}"] + list(tars.values())
                             + [fields["auc"]]])
    os.makedirs(args.out, exist_ok=True)
    report.plot_curves(os.path.join(args.out, "roc.png"), {fields["target"]: (curves["fpr"], curves["tpr"])},
                       "false positive rate", "true positive rate", f"ROC on {fields['target']}", logx=True,
                       xlim=(1e-6, 1.0), ylim=(0, 1.01))
    sections = [("1:1 verification, TAR at FAR", table), ("Plots", "![ROC](roc.png)\n")]
    out_fields = dict(fields, model=report.model_source(args.model))
    if extra is not None:
        out_fields["identification"] = extra
        sections.insert(1, ("1:N identification", report.md_table(
            ["rank-1 %", "rank-5 %", "rank-10 %"] + [f"TPIR@FPIR={k} %" for k in extra["tpir_at_fpir"]],
            [[extra["rank1"], extra["rank5"], extra["rank10"]] + list(extra["tpir_at_fpir"].values())])))
    mode = f"flip {'on' if not args.no_flip else 'off'}, norm score {'on' if not args.no_norm_score else 'off'}, " \
           f"detector score {'on' if not args.no_detector_score else 'off'}"
    md = report.write_report(args.out, "ijb", out_fields, f"{fields['target']}: {args.model}", sections,
                             notes=[mode, f"missing images: {curves['num_missing']}",
                                    report.model_note(out_fields["model"])])
    print(f"{fields['target']} 1:1 ({mode})")
    print("  " + "  ".join(f"TAR@{k}={100 * v:.2f}%" for k, v in tars.items()) + f"  AUC={100 * fields['auc']:.2f}%")
    if extra is not None:
        print(f"  1:N rank-1 {100 * extra['rank1']:.2f}%  rank-5 {100 * extra['rank5']:.2f}%  "
              f"rank-10 {100 * extra['rank10']:.2f}%")
    return _finish(args, out_fields, md)
