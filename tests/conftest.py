"""Shared fixtures.  Tests run on CPU with tiny networks; threads are capped so
that the suite behaves the same on the 2-core CI machine."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
