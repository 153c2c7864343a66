"""Gluon blocks around the Symbol networks of ``shrinkteanet.symbols``: ``network`` (``EmbeddingNet`` with its
stage taps, frozen teacher tails), ``rewrites`` (the graph rewrites, Symbol to Symbol) and ``checkpoint`` (the
one reader and writer of checkpoint files: InsightFace's layout cut at ``fc1_output``, what a training
checkpoint holds, a run's head, optimizer and JSON state for resume).  Inside, ``network`` imports the other
two and neither imports it back.  It may import ``core`` and ``symbols``; nothing here imports losses, data
or the training loop.
"""
