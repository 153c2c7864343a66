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
.PHONY: help install test test-assets demo bench clean info

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

test: install test-assets  ## run the whole pytest suite (creates .venv first if needed)
	$(BIN)/pytest -q tests

# Real photographs for the MTCNN tests: tests/test_images of the face_recognition 1.3.0
# source archive on PyPI (checksum-pinned), unpacked into $(TEST_ASSETS)/face_recognition/.
TEST_ASSETS ?= test-assets
FR_SDIST := face_recognition-1.3.0.tar.gz
FR_SHA256 := 5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec
test-assets: $(TEST_ASSETS)/face_recognition/.complete  ## fetch the real test photos (pip download face_recognition==1.3.0 sdist) into ./test-assets

$(TEST_ASSETS)/face_recognition/.complete:
	@mkdir -p $(TEST_ASSETS)/download
	@test -f $(TEST_ASSETS)/download/$(FR_SDIST) || $(if $(wildcard $(PIP)),$(PIP),$(PYTHON) -m pip) download \
	  --no-binary :all: --no-deps --no-build-isolation -d $(TEST_ASSETS)/download face_recognition==1.3.0
	@echo "$(FR_SHA256)  $(TEST_ASSETS)/download/$(FR_SDIST)" | sha256sum -c --quiet - \
	  || { rm -f $(TEST_ASSETS)/download/$(FR_SDIST); echo "test-assets: checksum mismatch for $(FR_SDIST)" >&2; exit 1; }
	@rm -rf $(TEST_ASSETS)/face_recognition.tmp && mkdir -p $(TEST_ASSETS)/face_recognition.tmp
	tar --no-same-owner -xzf $(TEST_ASSETS)/download/$(FR_SDIST) -C $(TEST_ASSETS)/face_recognition.tmp \
	  --strip-components=3 face_recognition-1.3.0/tests/test_images
	@touch $(TEST_ASSETS)/face_recognition.tmp/.complete
	@rm -rf $(TEST_ASSETS)/face_recognition && mv $(TEST_ASSETS)/face_recognition.tmp $(TEST_ASSETS)/face_recognition

# Evaluation: MODEL=PREFIX,EPOCH and DATA=DIR, defaulting to the demo's model and synthetic data.
DEMO_MODEL ?= $(OUT)/demo/student/model,1
EVAL_MODEL = $(if $(MODEL),$(MODEL),$(DEMO_MODEL))
EVAL_DATA = $(if $(DATA),$(DATA),$(OUT)/synth)
.PHONY: eval-lfw eval-megaface eval-ijbc
eval-lfw: install  ## verification on DATA/{lfw,cfp_fp,agedb_30}.bin -> $(OUT)/eval/verification
	$(CLI) eval verification --model $(EVAL_MODEL) --data-dir $(EVAL_DATA) --targets lfw,cfp_fp,agedb_30 \
	  --out $(OUT)/eval/verification --json $(OUT)/eval/verification.json

eval-megaface: install  ## MegaFace challenge 1 on DATA/megaface -> $(OUT)/eval/megaface
	$(CLI) eval megaface --model $(EVAL_MODEL) --megaface-root $(EVAL_DATA)/megaface \
	  --out $(OUT)/eval/megaface --json $(OUT)/eval/megaface.json

eval-ijbc: install  ## IJB-C 1:1 (and 1:N) on DATA/IJBC -> $(OUT)/eval/ijbc
	$(CLI) eval ijb --model $(EVAL_MODEL) --image-path $(EVAL_DATA)/IJBC --target IJBC \
	  --out $(OUT)/eval/ijbc --json $(OUT)/eval/ijbc.json

clean:  ## remove build outputs and the demo work folder (keeps .venv)
	rm -rf build dist *.egg-info src/*.egg-info $(OUT)
