"""Training: configuration tables (``config``), the training loop (``train``), run folders and their locks
(``run_folder``), the teacher-embedding cache (``teacher_cache``) and multi-machine launch (``launch``).
It may import ``core``, ``data``, ``symbols``, ``model``, ``methods`` and ``eval``.
"""
