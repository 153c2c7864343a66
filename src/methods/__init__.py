"""Teacher-student methods: the loss blocks (``losses``) and the training graph that combines a student, a
frozen teacher and the method's loss terms (``distill``). It may import ``core``, ``symbols`` and ``model``.
"""
