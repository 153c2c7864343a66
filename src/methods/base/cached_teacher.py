"""The teacher of a run that reads every teacher embedding from the teacher cache and loads no
checkpoint (``--teacher-cache`` without ``--teacher``; ``registry.teacher_embedding_only``): it
tells the build what it needs to know of the teacher, the width of its embedding (the cache's),
and has neither parameters nor a forward pass.  No MXNet here."""


class CachedTeacher:
    """Stand-in for a teacher known only by ``emb_size`` (``terms.teacher_emb_size`` reads it)."""

    cached = True
    with_taps = False
    split = None

    def __init__(self, emb_size):
        self.emb_size = int(emb_size)

    def collect_params(self):
        """No parameters to freeze."""
        return {}


def is_cached(teacher):
    """True for the stand-in (no network behind it)."""
    return bool(getattr(teacher, "cached", False))
