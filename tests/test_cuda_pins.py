"""The CUDA 11 runtime pins of ``make install MXNET=cu112`` and the Makefile's memory of the flavour.

``libmxnet.so``'s ``DT_NEEDED`` sonames are read by ``core._cuda.needed_sonames`` (pure Python ELF)
and compared with ``readelf -d``.  Only the CPU wheel is installed here; for mxnet-cu112 the pins
are checked against the soname table ``core._cuda.CU112_NEEDED`` (see docs/guides/install.md)."""
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from shrinkteanet.core import _cuda

ROOT = pathlib.Path(__file__).resolve().parents[1]
PINS = _cuda.read_pins((ROOT / "constraints-cu112.txt").read_text())


def _libmxnet():
    import importlib.util

    return os.path.join(list(importlib.util.find_spec("mxnet").submodule_search_locations)[0], "libmxnet.so")


def test_needed_sonames_are_the_dynamic_sections():
    needed = _cuda.needed_sonames(_libmxnet())
    assert "libc.so.6" in needed and len(needed) == len(set(needed))
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", _libmxnet()], capture_output=True, text=True, check=True).stdout
        assert needed == re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", out)
    # the CPU wheel links no CUDA library: nothing to pin
    assert not [s for s in needed if s.startswith(("libcu", "libnv", "libnccl"))]
    assert _cuda.check_pins(needed, {}) == []


def test_the_pins_provide_every_soname_mxnet_cu112_needs():
    assert _cuda.check_pins(_cuda.CU112_NEEDED, PINS) == []
    wheels = {_cuda.SONAME_WHEELS[s.split(".so")[0]] for s in _cuda.CU112_NEEDED
              if s.split(".so")[0] not in _cuda.DRIVER_LIBS}
    assert wheels == set(PINS)  # every wheel needed is pinned, nothing else is installed for it
    assert PINS["nvidia-cudnn-cu11"].split(".")[0] == "8"


@pytest.mark.parametrize("change, problem", [
    ({"nvidia-cudnn-cu11": "9.1.0.70"}, "libcudnn.so.8: nvidia-cudnn-cu11==9.1.0.70 does not provide it"),
    ({"nvidia-cuda-nvrtc-cu11": "11.1.105"}, "libnvrtc.so.11.2: nvidia-cuda-nvrtc-cu11==11.1.105 does not provide it"),
    ({"nvidia-cufft-cu11": None}, "libcufft.so.10: nvidia-cufft-cu11 is not pinned"),
])
def test_a_pin_that_misses_a_soname_is_named(change, problem):
    pins = dict(PINS)
    for k, v in change.items():
        if v is None:
            pins.pop(k)
        else:
            pins[k] = v
    assert _cuda.check_pins(_cuda.CU112_NEEDED, pins) == [problem]
    assert _cuda.check_pins(["libcutensor.so.1"], PINS) == ["libcutensor.so.1: no CUDA 11 wheel known to ship it"]


def _make_n(venv, *args):
    r = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.splitlines() if "/bin/pip " in ln]


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_remembers_the_installed_flavour(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed-cu112").touch()
    assert _make_n(venv, "test") == []  # cu112 installed: no reinstall of the CPU wheel
    switch = _make_n(venv, "install", "MXNET=cpu")  # an explicit switch replaces the wheel
    assert any("uninstall -y mxnet mxnet-cu112" in ln for ln in switch)
    assert any('-e ".[cpu,test,onnx]"' in ln for ln in switch)
    fresh = _make_n(tmp_path / "empty", "install", "MXNET=cu112")
    cuda = [ln for ln in fresh if "-c constraints-cu112.txt" in ln]
    assert len(cuda) == 1 and sorted(cuda[0].split("constraints-cu112.txt ", 1)[1].split()) == sorted(PINS)
