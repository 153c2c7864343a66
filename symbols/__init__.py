"""Face-embedding networks as MXNet Symbols, and their split into stages.

``get_symbol(network, emb_size=512, **opts)`` returns the embedding Symbol ``fc1``
(input Variable ``data``: NCHW raw RGB 0-255, normalised inside as InsightFace
does).  ``get_stages`` returns the same network as a ``StageSplit``: the four
stage outputs (ShrinkTeaNet's intermediate features F_i, Sec. 3.3) and, for each
stage i, the rest of the network [T_{i+1} o ... o T_n] as a Symbol of a fresh
Variable, with exactly the parameter names of the full network, so a teacher's
tail can share the teacher's weights by name.

Networks: ``r18 r34 r50 r90 r100`` (LResNet-E-IR, ``fresnet``), ``mfn``/``mfnr``
(``fmobilefacenet``), ``mv1`` (``fmobilenet``), ``mv2`` (``fmobilenetv2``), each declared
once in ``registry`` (builder, InsightFace compatibility, names, paper figures, training
defaults).
Options (tiny test networks, other resolutions):
``image_size`` (sets the GDC kernel: 7 at 112, 4 at 56),
fresnet ``units=(4 ints)``, ``filters=(5 ints)``;
mfn/mfnr ``blocks=(4)``, ``filters=(5)``, ``groups=(6)``;
mv1 ``multiplier``, ``blocks=(4)``; mv2 ``multiplier``, ``blocks=(7)``, ``last_channels``;
``dtype='float16'`` runs the four stages in float16 (Cast after the
normalisation, back to float32 before the output unit; taps are cast to float32).

Modules: ``registry`` (no MXNet), ``stages`` (``get_stages``, ``get_symbol``,
``StageSplit``), ``measure`` (parameter and FLOP counts: import them from there), ``common`` and the
family modules.  The registry names are bound here at import; the two contract names
``get_symbol``/``get_stages`` load ``stages`` (and MXNet) on first use, so importing the package - as
the training config and the reports do, to read the registry - costs no MXNet import.
This package may import ``core`` only.
"""
import importlib

from .registry import INSIGHTFACE_COMPATIBLE, NETWORKS, REGISTRY, NetworkSpec, get_spec

#: the contract names (../shared/CONTRACTS.md) of ``symbols.stages``, loaded on first attribute access
_LAZY = ("get_stages", "get_symbol")


def __getattr__(name):
    """The contract shim (PEP 562): ``symbols.get_symbol``/``get_stages`` import ``symbols.stages``
    (and MXNet) on first use; everything else is imported from its module (``measure``, ...)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.stages"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NETWORKS", "INSIGHTFACE_COMPATIBLE", "REGISTRY", "NetworkSpec", "get_spec", *_LAZY]
