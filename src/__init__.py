"""ShrinkTeaNet (Duong et al. 2019) and related teacher-student face recognition
on MXNet/Gluon, with InsightFace-compatible formats.

Importing the package does not import mxnet; submodules that need it do.
"""
__version__ = "0.1.0"
