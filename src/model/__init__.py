"""Gluon blocks around the Symbol networks of ``shrinkteanet.symbols``: ``network`` (``EmbeddingNet`` with its
stage taps, frozen teacher tails, graph rewrites) and ``checkpoint`` (the one reader and writer of checkpoint
files: InsightFace's layout cut at ``fc1_output``, and a training run's head, optimizer and JSON state for
resume). It may import ``core`` and ``symbols``; nothing here imports losses, data or the training loop.
"""
