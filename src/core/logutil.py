"""One logger setup for the whole package: console plus an optional log file.

Library code calls ``get_logger(__name__)`` and never prints; the CLI calls
``setup_logging`` once.
"""
import logging
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
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h._shrinkteanet = True
        h.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(h)
    root.propagate = False
    return root
