"""The InsightFace-style reference loops of ``bench/_insightface_ref.py`` (written the way
InsightFace's verification.py and IJB scripts are), loaded by file path: the eval tests and
bench/bench_eval.py compare against the same code."""
import importlib.util
import os

REF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "_insightface_ref.py")


def insightface_ref():
    """The reference module, freshly loaded."""
    spec = importlib.util.spec_from_file_location("_insightface_ref", REF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
