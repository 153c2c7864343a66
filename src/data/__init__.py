"""Face data in InsightFace's formats: RecordIO training sets, ``.bin`` verification
pairs, ``.lst`` lists, the one image decoder/encoder (``images``), 5-point alignment
and a multi-process training loader.  It imports only ``core``.

``shrinkteanet.data.FaceRecordDataset`` (the contract name) is resolved lazily so that
``import shrinkteanet.data`` stays cheap (no mxnet, no OpenCV) until a submodule is used.
"""
import importlib

#: the contract names of ``../shared/CONTRACTS.md`` -> their module (loaded on first use); everything
#: else is imported from its module
_EXPORTS = {"FaceRecordDataset": "recordio"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
