"""Make the CUDA 11 runtime of the ``nvidia-*-cu11`` pip wheels findable by mxnet-cu112.

``mxnet-cu112==1.9.1`` links libcudart/cuBLAS/cuDNN/NCCL/... 11 dynamically but ships none
of them; ``make install MXNET=cu112`` installs them as pip wheels under
``site-packages/nvidia/*/lib``, which the dynamic loader does not search.  ``preload()``
loads them with ``RTLD_GLOBAL`` before ``import mxnet`` so that libmxnet's dependencies
resolve to them.  Without those folders, or with the CPU wheel, it does nothing.

Which wheel versions: ``constraints-cu112.txt`` pins one wheel per CUDA library; ``needed_sonames``
reads the ``DT_NEEDED`` entries of a ``libmxnet.so`` (the ELF dynamic section, in pure Python) and
``check_pins`` says which of them no pin provides (``SONAME_WHEELS``: library -> wheel; a wheel
provides ``libX.so.M[.m]`` when its version has the major ``M`` and is at least ``M.m``).
``CU112_NEEDED`` lists the CUDA sonames of mxnet-cu112 1.9.1's ``libmxnet.so`` as its build
(CUDA 11.2, cuDNN 8, NCCL 2) names them: that wheel is not installed here, so for it the check
runs against this table, not against the file.
"""
import ctypes
import glob
import os
import re
import struct
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


#: library name -> the pip wheel shipping it (CUDA 11); the driver's own (libcuda, libnvidia-ml) are not wheels
SONAME_WHEELS = {"libcudart": "nvidia-cuda-runtime-cu11", "libcublas": "nvidia-cublas-cu11",
                 "libcublasLt": "nvidia-cublas-cu11", "libcudnn": "nvidia-cudnn-cu11", "libnccl": "nvidia-nccl-cu11",
                 "libcufft": "nvidia-cufft-cu11", "libcurand": "nvidia-curand-cu11",
                 "libcusolver": "nvidia-cusolver-cu11", "libcusparse": "nvidia-cusparse-cu11",
                 "libnvrtc": "nvidia-cuda-nvrtc-cu11"}
DRIVER_LIBS = ("libcuda", "libnvidia-ml")
#: the CUDA sonames mxnet-cu112==1.9.1's libmxnet.so needs (CUDA 11.2 toolkit, cuDNN 8, NCCL 2): by table
CU112_NEEDED = ("libcudart.so.11.0", "libcublas.so.11", "libcublasLt.so.11", "libcudnn.so.8", "libnccl.so.2",
                "libcufft.so.10", "libcurand.so.10", "libcusolver.so.11", "libcusparse.so.11", "libnvrtc.so.11.2",
                "libcuda.so.1")
_CUDA_LIB = re.compile(r"lib(cu|nv|nccl)")


def needed_sonames(path):
    """The ``DT_NEEDED`` sonames of a 64-bit little-endian ELF shared library: its ``.dynamic``
    section's entries of tag 1, names read from the string table the section links to."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        dyn = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
        strtab = sections[dyn[6]]  # sh_link: its .dynstr
        f.seek(dyn[4])
        entries = f.read(dyn[5])
        f.seek(strtab[4])
        strings = f.read(strtab[5])
    out = []
    for tag, val in struct.iter_unpack("<qQ", entries):
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED: offset of the name in .dynstr
            out.append(strings[val:strings.index(b"\0", val)].decode())
    return out


def read_pins(text):
    """``{package: version}`` of the ``name==version`` lines of a constraints file."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = (x.strip() for x in line.split("==", 1))
            pins[name.lower()] = version
    return pins


def _numbers(text):
    return tuple(int(x) for x in re.findall(r"\d+", text))


def check_pins(needed, pins):
    """The problems (one line each; none: ``[]``) of ``pins`` (``read_pins``) for the CUDA
    sonames in ``needed``: a library with no known wheel, a wheel not pinned, a pin whose
    version does not provide the soname (other major, or older than ``M.m``)."""
    problems = []
    for soname in needed:
        lib, _, version = soname.partition(".so")
        if not _CUDA_LIB.match(lib) or lib in DRIVER_LIBS:
            continue
        wheel = SONAME_WHEELS.get(lib)
        if wheel is None:
            problems.append(f"{soname}: no CUDA 11 wheel known to ship it")
            continue
        if wheel not in pins:
            problems.append(f"{soname}: {wheel} is not pinned")
            continue
        want, have = _numbers(version), _numbers(pins[wheel])
        if not want or have[:1] != want[:1] or have[:len(want)] < want:
            problems.append(f"{soname}: {wheel}=={pins[wheel]} does not provide it")
    return problems
