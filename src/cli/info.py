"""`shrinkteanet info`: versions, MXNet build features and visible devices."""
from shrinkteanet.cli import add_json_arg

ORDER = 0


def register(sub):
    p = sub.add_parser("info", help="package, mxnet features, library versions and devices")
    add_json_arg(p)
    p.set_defaults(func=run)


def collect():
    import importlib.metadata as md
    import platform

    import cv2
    import mxnet as mx
    import numpy as np

    from shrinkteanet import __version__

    feats = mx.runtime.Features()
    try:
        num_gpus = mx.context.num_gpus()
    except Exception:  # a CPU wheel raises instead of answering 0 on some drivers
        num_gpus = 0
    devices = ["cpu(0)"] + [f"gpu({i})" for i in range(num_gpus)]

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "shrinkteanet": __version__,
        "python": platform.python_version(),
        "mxnet": mx.__version__,
        "mxnet_features": {k: feats.is_enabled(k) for k in ("MKLDNN", "CUDA", "CUDNN", "NCCL", "DIST_KVSTORE", "OPENMP")},
        "gluoncv": version("gluoncv"),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": version("onnxruntime"),
        "devices": devices,
    }


def run(args):
    from shrinkteanet.core.utils import write_json

    info = collect()
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, dict):
            v = " ".join(f"{kk}={'on' if vv else 'off'}" for kk, vv in v.items())
        elif isinstance(v, list):
            v = ", ".join(v)
        print(f"{k:<{width}}  {v}")
    if args.json:
        write_json(args.json, info)
    return 0
