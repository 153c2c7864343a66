"""The frame every other sub-package stands on: ``errors`` (the one-line ``InputError``), ``constants``
(InsightFace's normalisation, template landmarks, protocol constants), ``logutil``, ``finite`` (NaN/inf checks of NDArrays), ``utils`` and the CUDA
library preload. It imports nothing else of the package, and importing it does not import mxnet.
"""
