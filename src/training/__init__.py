"""Training: configuration tables (``config``), building a run from a config (``train``), the loop in named
phases (``fit``), seeds and learning-rate schedules (``schedule``), run folders and their locks (``run_folder``),
the teacher-embedding cache (``teacher_cache``) and multi-machine launch (``launch``).
It may import ``core``, ``data``, ``symbols``, ``model``, ``methods`` and ``eval``.
"""
