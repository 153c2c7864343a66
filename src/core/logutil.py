"""One logger setup for the whole package: console plus an optional log file.

Library code calls ``get_logger(__name__)`` and never prints; the CLI calls
``setup_logging`` once.
"""
import logging
import logging.handlers
import os
import sys

_ROOT = "shrinkteanet"
_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def get_logger(name=_ROOT):
    """Logger under the package root (``shrinkteanet.<module>``)."""
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


def setup_logging(level="INFO", log_file=None):
    """Configure the package root logger; idempotent (replaces our own handlers)."""
    root = logging.getLogger(_ROOT)
    root.setLevel(level if isinstance(level, int) else getattr(logging, str(level).upper()))
    for h in list(root.handlers):
        if getattr(h, "_shrinkteanet", False):
            root.removeHandler(h)
            h.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h._shrinkteanet = True
        h.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(h)
    root.propagate = False
    return root


class LogFile:
    """A log file that may only be opened later (a run's log, once its folder is claimed):
    the package's records wait in memory until ``open(path)``, go to the file from then on,
    and ``close()`` detaches both.  Nothing is written anywhere before ``open``."""

    def __init__(self):
        self.memory = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self.file = None
        logging.getLogger(_ROOT).addHandler(self.memory)

    def open(self, path):
        """Write the records so far to ``path`` (appended), and every record after them."""
        self.file = logging.FileHandler(path)
        self.file.setFormatter(logging.Formatter(_FORMAT))
        root = logging.getLogger(_ROOT)
        self.memory.setTarget(self.file)
        self.memory.flush()
        root.removeHandler(self.memory)
        root.addHandler(self.file)

    def close(self):
        root = logging.getLogger(_ROOT)
        for h in (self.memory, self.file):
            if h is not None:
                root.removeHandler(h)
                h.close()
        self.memory.setTarget(None)
