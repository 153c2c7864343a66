# shrinkteanet — every entry point a user needs.  `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
# the flavour .venv holds (its stamp .installed-FLAVOUR): `make test` after `make install MXNET=cu112` keeps the
# GPU wheel; MXNET=... on the command line switches
INSTALLED := $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*)))
MXNET ?= $(or $(INSTALLED),cpu)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(MXNET)
# the CUDA 11 runtime wheels mxnet-cu112 loads, every one pinned there (tests/test_cuda_pins.py)
CU112_CONSTRAINTS := constraints-cu112.txt
CU112_WHEELS = $(shell sed -n 's/^\(nvidia-[a-z0-9-]*\)==.*/\1/p' $(CU112_CONSTRAINTS))
PIP := $(BIN)/pip
PY := $(BIN)/python
CLI := $(BIN)/shrinkteanet
DATA ?=
OUT ?= work
GPUS ?=
MODEL ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-assets demo bench clean info docs

help:  ## list every target with one line each
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): setup.py constraints.txt $(if $(filter cu112,$(MXNET)),$(CU112_CONSTRAINTS))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip -c constraints.txt
	@# the two wheels both provide the `mxnet` package: switching flavour removes the other one first
	$(if $(and $(INSTALLED),$(filter-out $(MXNET),$(INSTALLED))),$(PIP) uninstall -y mxnet mxnet-cu112)
	$(PIP) install -c constraints.txt -e ".[$(MXNET),test,onnx]"
	$(if $(filter cu112,$(MXNET)),$(PIP) install -c constraints.txt -c $(CU112_CONSTRAINTS) $(CU112_WHEELS))
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)  ## make .venv (Python 3.11) and install .[cpu,test] with -c constraints.txt (MXNET=cu112 for GPUs; remembered)

info: install  ## print package, mxnet features, versions and visible devices
	$(CLI) info

TESTS ?= tests
test: install test-assets  ## run the pytest suite, one process per file (creates .venv first if needed)
	$(PY) tests/run_isolated.py $(TESTS)

# Sphinx: guides (MyST Markdown) + API pages from the docstrings; any warning fails (-W --keep-going).
DOCS_OUT ?= build/docs
docs: install  ## build the HTML documentation into build/docs/html (fails on any Sphinx warning)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs $(DOCS_OUT)/html
	@echo "docs: $(DOCS_OUT)/html/index.html"

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
EVAL_DATA = $(if $(DATA),$(DATA),$(OUT)/demo/synth)
# the demo's networks are small: their input side is written beside the demo student
EVAL_SIZE = --image-size $(if $(MODEL),$(or $(IMAGE_SIZE),112),$(shell cat $(OUT)/demo/student/image_size 2>/dev/null || echo 112))
.PHONY: eval-lfw eval-megaface eval-ijbc
eval-lfw: install  ## verification on DATA/{lfw,cfp_fp,agedb_30}.bin -> $(OUT)/eval/verification
	$(CLI) eval verification --model $(EVAL_MODEL) $(EVAL_SIZE) --data-dir $(EVAL_DATA) --targets lfw,cfp_fp,agedb_30 \
	  --out $(OUT)/eval/verification --json $(OUT)/eval/verification.json

eval-megaface: install  ## MegaFace challenge 1 on DATA/megaface -> $(OUT)/eval/megaface
	$(CLI) eval megaface --model $(EVAL_MODEL) $(EVAL_SIZE) --megaface-root $(EVAL_DATA)/megaface \
	  --out $(OUT)/eval/megaface --json $(OUT)/eval/megaface.json

eval-ijbc: install  ## IJB-C 1:1 (and 1:N) on DATA/IJBC -> $(OUT)/eval/ijbc
	$(CLI) eval ijb --model $(EVAL_MODEL) $(EVAL_SIZE) --image-path $(EVAL_DATA)/IJBC --target IJBC \
	  --out $(OUT)/eval/ijbc --json $(OUT)/eval/ijbc.json

# Demo and reproduction (issue 9): every stage is a real `shrinkteanet` command; see docs/reproduction.md.
DEMO_SCALE ?=
JOBS ?=
DEMO_FLAGS = $(if $(DEMO_SCALE),--scale $(DEMO_SCALE))
STUDY_FLAGS = $(DEMO_FLAGS) $(if $(JOBS),--jobs $(JOBS))
.PHONY: reproduce-small small-data
demo: install  ## synthetic data -> teacher -> MFN-R self-studied vs distilled -> all evals -> $(OUT)/demo/REPORT.md, study.json (JOBS=N)
	$(CLI) demo --out $(OUT)/demo $(STUDY_FLAGS)

reproduce-small: install  ## the decisive study: converged MFN-R runs, 7 methods x 3 seeds, paired 95% intervals, verdicts (about 56 min) -> $(OUT)/reproduce-small/
	$(CLI) reproduce --out $(OUT)/reproduce-small $(STUDY_FLAGS)

# The fair study (issue 26): one part per target, resumable (a killed run continues from its last checkpoint),
# REPORT.md merges the finished parts; STUDENTS=mfnr or mfn for one network, JOBS=N, FAIR_SCALE=fair_tiny to try it.
FAIR_SCALE ?= fair
STUDENTS ?=
FAIR_FLAGS = --scale $(FAIR_SCALE) --resume $(if $(JOBS),--jobs $(JOBS)) $(if $(STUDENTS),--students $(STUDENTS))
.PHONY: reproduce-calibration reproduce-tuning reproduce-main reproduce-efficiency
reproduce-calibration: install  ## fair study: teacher and self-studied students at doubling budgets -> $(OUT)/reproduce-fair/
	$(CLI) reproduce --part calibration --out $(OUT)/reproduce-fair $(FAIR_FLAGS)

reproduce-tuning: install  ## fair study: each method's strength grid, one seed, chosen on val.bin only
	$(CLI) reproduce --part tuning --out $(OUT)/reproduce-fair $(FAIR_FLAGS)

reproduce-main: install  ## fair study: Table 2's rows (+ extra methods, tuned rows) at the budget, every seed
	$(CLI) reproduce --part main --out $(OUT)/reproduce-fair $(FAIR_FLAGS)

reproduce-efficiency: install  ## fair study: the same students at a quarter of the budget, steps to match
	$(CLI) reproduce --part efficiency --out $(OUT)/reproduce-fair $(FAIR_FLAGS)

# A retrained teacher is bit-identical only on the same CPU type, so the fair teacher's checkpoint is kept:
# copied into a new folder's teacher/, its train stage resumes at its end (no step) and the parts learn from it.
FAIR_TEACHER ?= docs/results/main/teacher-c
.PHONY: reproduce-teacher
reproduce-teacher:  ## fair study: seed $(OUT)/reproduce-fair/teacher/ with the kept teacher C (refused over a teacher run)
	@if [ -e $(OUT)/reproduce-fair/teacher/model-state.json ]; then \
		echo "$(OUT)/reproduce-fair/teacher/model-state.json: a teacher run is there already" >&2; exit 2; fi
	mkdir -p $(OUT)/reproduce-fair/teacher
	cp $(FAIR_TEACHER)/model-* $(OUT)/reproduce-fair/teacher/

small-data: install  ## only the demo's synthetic set ($(OUT)/demo/synth), the train-* targets' data when DATA is unset
	$(CLI) demo --out $(OUT)/demo --only-data $(DEMO_FLAGS)

# Paper rows: recipes/<row>.sh with DATA, OUT=$(OUT)/recipes, GPUS, TEACHER.  Without DATA they run on the
# demo's synthetic set with the demo's small networks and schedule (OUT=$(OUT)/recipes-small) and say so.
SMALL_DATA = $(OUT)/demo/synth
RECIPE_OUT = $(OUT)/recipes$(if $(DATA),,-small)
# $(call RECIPE,row,network of the small-scale overrides[,arguments of the recipe])
RECIPE = $(if $(DATA),,@echo "DATA is not set: $(strip $(1) $(3)) runs on the synthetic set $(SMALL_DATA) at the demo's small scale"; \
	$(CLI) demo --out $(OUT)/demo --only-data $(DEMO_FLAGS) >/dev/null;) \
	DATA=$(or $(DATA),$(SMALL_DATA)) OUT=$(RECIPE_OUT) GPUS=$(GPUS) SHRINKTEANET=$(CLI) $(if $(TEACHER),TEACHER=$(TEACHER)) \
	$(if $(DATA),$(if $(MEGAFACE),MEGAFACE=$(MEGAFACE)) $(if $(IJB),IJB=$(IJB)),MEGAFACE=$(SMALL_DATA)/megaface IJB=$(SMALL_DATA)) \
	EXTRA="$(if $(DATA),,$$($(CLI) demo --recipe-extra $(2) $(DEMO_FLAGS))) $(EXTRA)" bash recipes/$(1).sh $(3)
.PHONY: train-teacher train-teacher-r100 train-mfnr train-mfnr-self train-mfnr-l2 train-mfn-self train-mfn-l2 \
	train-mfn-stn train-mv1-self train-mv1-l2 train-mv1-stn train-mv2-self train-mv2-l2 train-mv2-stn \
	train-mfn-margin train-mfn-adadistill train-mfn-ekd train-lowres-kt train-lowres-kd train-lowres-ktkd
train-teacher: install  ## teacher LResNet-E-IR r90 (ArcFace), then all evaluations
	$(call RECIPE,teacher_r90,r90)
train-teacher-r100: install  ## teacher LResNet-E-IR r100 (ArcFace), then all evaluations
	$(call RECIPE,teacher_r100,r100)
train-mfnr: install  ## MobileFaceNet-R with ShrinkTeaNet from the r90 teacher (TEACHER=P,E or the newest), then evals
	$(call RECIPE,mfnr_stn,mfnr)
train-mfnr-self: install  ## MobileFaceNet-R self-studied (ArcFace only)
	$(call RECIPE,mfnr_self,mfnr)
train-mfnr-l2: install  ## MobileFaceNet-R + L2 embedding loss ("Student-1")
	$(call RECIPE,mfnr_l2,mfnr)
train-mfn-self: install  ## MobileFaceNet self-studied
	$(call RECIPE,mfn_self,mfn)
train-mfn-l2: install  ## MobileFaceNet + L2 embedding loss
	$(call RECIPE,mfn_l2,mfn)
train-mfn-stn: install  ## MobileFaceNet with ShrinkTeaNet
	$(call RECIPE,mfn_stn,mfn)
train-mv1-self: install  ## MobileNetV1 self-studied
	$(call RECIPE,mv1_self,mv1)
train-mv1-l2: install  ## MobileNetV1 + L2 embedding loss
	$(call RECIPE,mv1_l2,mv1)
train-mv1-stn: install  ## MobileNetV1 with ShrinkTeaNet
	$(call RECIPE,mv1_stn,mv1)
train-mv2-self: install  ## MobileNetV2 self-studied
	$(call RECIPE,mv2_self,mv2)
train-mv2-l2: install  ## MobileNetV2 + L2 embedding loss
	$(call RECIPE,mv2_l2,mv2)
train-mv2-stn: install  ## MobileNetV2 with ShrinkTeaNet
	$(call RECIPE,mv2_stn,mv2)
train-mfn-margin: install  ## MarginDistillation, MobileFaceNet student
	$(call RECIPE,mfn_margin,mfn)
train-mfn-adadistill: install  ## AdaDistill (AdaArcDistill), MobileFaceNet student
	$(call RECIPE,mfn_adadistill,mfn)
train-mfn-ekd: install  ## EKD (evaluation-oriented KD), MobileFaceNet student
	$(call RECIPE,mfn_ekd,mfn)
train-lowres-kt: install  ## low-resolution student (teacher's architecture at LOWRES=56; STUDENT=mfn..), knowledge transfer
	$(call RECIPE,lowres,lowres,kt)
train-lowres-kd: install  ## low-resolution student, knowledge distillation
	$(call RECIPE,lowres,lowres,kd)
train-lowres-ktkd: install  ## low-resolution student, KT + KD
	$(call RECIPE,lowres,lowres,ktkd)

.PHONY: gpu-smoke
gpu-smoke: install  ## GPU machine check (< 10 min): import, a convolution, mfnr_stn fp32/fp16 on every GPU, resume on another count
	bash tools/gpu_smoke.sh

BENCHES ?= loader synth distill train eval deploy mtcnn
bench: install test-assets  ## run every benchmark (BENCHES="loader eval ..." for some) -> docs/benchmarks.md
	@for b in $(BENCHES); do echo "== bench/bench_$$b.py"; $(PY) bench/bench_$$b.py || exit $$?; done

clean:  ## remove build outputs and the demo work folder (keeps .venv)
	rm -rf build dist *.egg-info src/*.egg-info $(OUT)
