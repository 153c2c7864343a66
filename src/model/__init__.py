"""Gluon blocks around the Symbol networks of ``shrinkteanet.symbols``: ``network`` (``EmbeddingNet`` with its
stage taps, frozen teacher tails, graph rewrites) and the InsightFace checkpoint layout. It may import
``core`` and ``symbols``; nothing here knows about losses, data or training.
"""
