"""ShrinkTeaNet (Duong et al. 2019) and related teacher-student face recognition
on MXNet/Gluon, with InsightFace-compatible formats.

Importing the package does not import mxnet; submodules that need it do.
"""
__version__ = "0.1.0"

from shrinkteanet.core import _cuda  # noqa: E402 - CUDA 11 wheels' libraries for mxnet-cu112; a no-op otherwise

_cuda.preload()
