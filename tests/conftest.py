"""Shared fixtures.  Tests run on CPU with tiny networks; threads are capped so
that the suite behaves the same on the 2-core CI machine."""
import logging
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture()
def cli_log_handlers_closed():
    """``cli.main`` binds a stderr handler to capsys' stream; drop it once that stream is gone."""
    yield
    root = logging.getLogger("shrinkteanet")
    for h in [h for h in root.handlers if getattr(h, "_shrinkteanet", False)]:
        root.removeHandler(h)
        h.close()
    root.propagate = True
