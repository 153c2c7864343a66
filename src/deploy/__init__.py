"""Deployment of a trained student: the inference graph, ONNX, MKLDNN and INT8 CPU models (``export``).
It may import ``core``, ``data``, ``symbols``, ``model`` and ``eval``.
"""
