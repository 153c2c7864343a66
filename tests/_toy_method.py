"""A whole method as one file, written into the installed ``shrinkteanet.methods`` folder for one test
and removed after (``installed_method``): how a user adds a method, with nothing else edited."""
import contextlib
import importlib
import os
import sys

from shrinkteanet import methods as methods_pkg
from shrinkteanet.methods.base import registry


@contextlib.contextmanager
def installed_method(name, source):
    """``methods/<name>.py`` holding ``source`` while the block runs; its bytecode and module are
    forgotten after, and discovery runs again on both sides."""
    path = os.path.join(methods_pkg.__path__[0], f"{name}.py")
    assert not os.path.exists(path)
    try:
        with open(path, "w") as f:
            f.write(source)
        importlib.invalidate_caches()
        registry.refresh()
        yield path
    finally:
        os.remove(path)
        cached = os.path.join(os.path.dirname(path), "__pycache__")
        for entry in os.listdir(cached) if os.path.isdir(cached) else ():
            if entry.startswith(f"{name}."):
                os.remove(os.path.join(cached, entry))
        sys.modules.pop(f"shrinkteanet.methods.{name}", None)
        registry.refresh()
