"""Make the CUDA 11 runtime of the ``nvidia-*-cu11`` pip wheels findable by mxnet-cu112.

``mxnet-cu112==1.9.1`` links libcudart/cuBLAS/cuDNN/NCCL/... 11 dynamically but ships none
of them; ``make install MXNET=cu112`` installs them as pip wheels under
``site-packages/nvidia/*/lib``, which the dynamic loader does not search.  ``preload()``
loads them with ``RTLD_GLOBAL`` before ``import mxnet`` so that libmxnet's dependencies
resolve to them.  Without those folders, or with the CPU wheel, it does nothing.
"""
import ctypes
import glob
import os
import sys

#: load order: the runtime first, then the libraries that depend on it
_ORDER = ("cuda_runtime", "cublas", "cufft", "curand", "cusolver", "cusparse", "cuda_nvrtc", "cudnn", "nccl")
_loaded = []


def _lib_dirs():
    found = []
    for entry in sys.path:
        base = os.path.join(entry or ".", "nvidia")
        if os.path.isdir(base):
            found += sorted(glob.glob(os.path.join(base, "*", "lib")))
    return found


def _cuda_mxnet():
    import importlib.metadata  # only reached where nvidia/*/lib folders exist: keeps CPU start-up light

    for dist in ("mxnet-cu112", "mxnet-cu110", "mxnet-cu117"):
        try:
            importlib.metadata.distribution(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def preload():
    """Load the wheels' CUDA libraries globally; returns the paths loaded ([] on CPU installs)."""
    if _loaded or "mxnet" in sys.modules:
        return list(_loaded)
    dirs = _lib_dirs()
    if not dirs or not _cuda_mxnet():
        return []
    libs = []
    for d in sorted(dirs, key=lambda p: next((i for i, n in enumerate(_ORDER) if os.sep + n + os.sep in p + os.sep),
                                             len(_ORDER))):
        libs += sorted(glob.glob(os.path.join(d, "lib*.so*")))
    pending = libs
    for _ in range(3):  # a library whose dependency comes later in the list loads on a later pass
        failed = []
        for path in pending:
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                _loaded.append(path)
            except OSError:
                failed.append(path)
        if not failed or len(failed) == len(pending):
            break
        pending = failed
    return list(_loaded)
