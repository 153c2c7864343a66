"""Deployment of a trained student: the inference graph (``graph``), its fixed-batch runner and checks
(``runner``), ONNX (``onnx_export``), MKLDNN and INT8 CPU models (``cpu``), and ``export``, which
orchestrates them for ``shrinkteanet export``.
It may import ``core``, ``data``, ``symbols``, ``model`` and ``eval``.
"""
