"""`shrinkteanet data align --detector mtcnn SRC_DIR_OR_LST --out DIR [--lst OUT.lst]`:
the raw-photo branch of ``data align`` (registered by ``cli/data.py``; the leading
underscore keeps this module out of subcommand discovery)."""
import os

from shrinkteanet.core.errors import InputError


def add_arguments(p):
    p.add_argument("src", nargs="?", metavar="SRC_DIR_OR_LST", default=None,
                   help="with --detector mtcnn: raw photos, a folder (identity sub-folders or flat) or a .lst")
    p.add_argument("--detector", choices=("none", "mtcnn"), default="none",
                   help="none: landmarks from --lst; mtcnn: detect them in SRC_DIR_OR_LST "
                        "(then --lst names the output list)")
    p.add_argument("--select", choices=("largest", "central", "single"), default="largest",
                   help="face to keep when a photo has several: largest box, nearest the centre, "
                        "or none (single: report 'several faces')")
    p.add_argument("--min-face-size", type=int, default=20, help="MTCNN minimum face size in pixels (default 20)")


def run(args):
    from shrinkteanet.data.detect import NO_FACE, SEVERAL, UNREADABLE, align_photos, collect_photos
    from shrinkteanet.data.lst import write_lst
    from shrinkteanet.data.mtcnn import get_detector
    from shrinkteanet.core.utils import atomic_open, write_json

    if not args.src:
        raise InputError("data align --detector mtcnn needs SRC_DIR_OR_LST (a folder of photos or a .lst)")
    out_dir = os.path.abspath(args.out_dir)
    out_lst = args.lst or args.out_lst or os.path.join(out_dir, "aligned.lst")
    if os.path.abspath(out_lst) == os.path.abspath(args.src):
        raise InputError(f"--lst {out_lst}: would overwrite the input list")
    photos = collect_photos(args.src)
    det = get_detector(min_face_size=args.min_face_size)
    items, records = align_photos(photos, out_dir, det, select=args.select, image_size=args.image_size,
                                  quality=args.quality)
    write_lst(out_lst, items, root=os.path.dirname(os.path.abspath(out_lst)))
    failures = [r for r in records if r["status"] != "ok"]
    report_path = os.path.join(out_dir, "failures.tsv")
    with atomic_open(report_path, "w") as f:
        for r in failures:
            f.write(f"{r['path']}\t{r['status']}\n")
    counts = {k: sum(r["status"] == k for r in records) for k in (UNREADABLE, NO_FACE, SEVERAL)}
    several = sum(r["num_faces"] > 1 for r in records if r["status"] == "ok")
    res = {
        "detector": "mtcnn", "select": args.select, "num_images": len(records), "num_aligned": len(items),
        "num_failed": len(failures), "failures_by_reason": counts, "num_picked_from_several": several,
        "out_dir": out_dir, "out_lst": out_lst, "failure_report": report_path,
        "failures": [{"path": r["path"], "reason": r["status"]} for r in failures], "images": records,
    }
    print(f"aligned {len(items)} of {len(records)} photos to {args.image_size}x{args.image_size} in {out_dir}; "
          f"list {out_lst}")
    if several:
        print(f"  {several} photos had several faces; kept the {args.select} one")
    if failures:
        print(f"  {len(failures)} failed (" + ", ".join(f"{k}: {v}" for k, v in counts.items() if v)
              + f"); report {report_path}")
        for r in failures[:20]:
            print(f"    {r['path']}: {r['status']}")
        if len(failures) > 20:
            print(f"    ... {len(failures) - 20} more in {report_path}")
    if args.json:
        write_json(args.json, res)
    return 0
