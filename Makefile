# shrinkteanet — every entry point a user needs.  `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
MXNET ?= cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(MXNET)
PIP := $(BIN)/pip
PY := $(BIN)/python
CLI := $(BIN)/shrinkteanet
DATA ?=
OUT ?= work
GPUS ?=
MODEL ?=

.DEFAULT_GOAL := help
.PHONY: help install test demo bench clean info

help:  ## list every target with one line each
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip -c constraints.txt
	$(PIP) install -c constraints.txt -e ".[$(MXNET),test,onnx]"
	@if [ "$(MXNET)" = "cu112" ]; then $(PIP) install -c constraints.txt \
	  nvidia-cuda-runtime-cu11 nvidia-cublas-cu11 nvidia-cudnn-cu11 nvidia-nccl-cu11 \
	  nvidia-cufft-cu11 nvidia-curand-cu11 nvidia-cusolver-cu11 nvidia-cusparse-cu11 nvidia-cuda-nvrtc-cu11; fi
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)  ## make .venv (Python 3.11) and install .[cpu,test] with -c constraints.txt (MXNET=cu112 for GPUs)

info: install  ## print package, mxnet features, versions and visible devices
	$(CLI) info

test: install  ## run the whole pytest suite (creates .venv first if needed)
	$(BIN)/pytest -q tests

clean:  ## remove build outputs and the demo work folder (keeps .venv)
	rm -rf build dist *.egg-info src/*.egg-info $(OUT)
