# SCXNN study. `make reports` runs the study (PROFILE=demo by default), `make test` the tests.
# Every notebook target is a real file under reports/executed/<profile>/ whose prerequisites are
# the notebook, the profile's params files, the scxnn modules it calls and the step it reads from,
# so reruns redo only what changed and `make -j` runs independent steps (the 13 findings) in parallel.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PROFILE ?= demo
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := .ci/constraints.txt
EXEC := reports/executed/$(PROFILE)
# Parallel by default: `make reports` runs JOBS notebooks at once (the 13 models, the variants), one
# per core on a CPU machine. On a machine with a GPU the jobs would share it, so one at a time there.
# `make reports JOBS=1` (or -j1 on the command line, which wins) runs one at a time.
# LAUNCH=slurm: every notebook, finding model and variant runs as a SLURM job (srun) with the
# resources of params `launch` (scxnn.launch; docs/cluster.md); JOBS is then the number of
# jobs kept in the queue at once.
LAUNCH ?= local
EMPTY :=
SPACE := $(EMPTY) $(EMPTY)
NPROC := $(shell nproc 2>/dev/null || echo 1)
GPUS := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0)
# $(call ON,KIND,NAME[,--finding F]): the prefix that runs a recipe's command as a SLURM job with
# the resources of params launch.KIND; nothing for a local run.
ifeq ($(LAUNCH),slurm)
JOBS ?= 32
ON = $(PY) -m scxnn launch --profile $(PROFILE) --kind $(1) --name $(2)$(if $(3), $(3)) --$(SPACE)
else ifeq ($(LAUNCH),local)
JOBS ?= $(if $(filter-out 0,$(GPUS)),1,$(NPROC))
ON =
else
$(error LAUNCH must be local or slurm, got '$(LAUNCH)')
endif
MAKEFLAGS += -j$(JOBS)
# Each of the N running notebooks gets cores/N threads: N PyTorch processes each spinning up one
# OpenMP thread per core ran 5-40x slower than this on 2 cores. (Results are reproducible for a
# given thread count; a different count changes float summation order.) Recursive so that it
# reads -jN from MAKEFLAGS at recipe time, when make has filled it in ("-j" alone: unlimited).
RUNNING_JOBS = $(if $(filter -j%,$(MAKEFLAGS)),$(or $(patsubst -j%,%,$(lastword $(filter -j%,$(MAKEFLAGS)))),$(NPROC)),1)
THREADS = $(shell j=$(RUNNING_JOBS); [ -n "$${j//[0-9]/}" ] && j=$(NPROC); t=$$(( $(NPROC) / j )); echo $$(( t > 0 ? t : 1 )))
# $(call RUN_NB,KIND,NAME): the notebook runner, through SLURM under LAUNCH=slurm (KIND: launch.KIND).
RUN_NB = OMP_NUM_THREADS=$(THREADS) $(call ON,$(1),$(2),$(3))$(PY) -m scxnn notebook

.DEFAULT_GOAL := help

# ---------------------------------------------------------------- environment
# The venv is rebuilt when pyproject.toml or the pins change. Notebook targets depend on it
# order-only (after `|`), so reinstalling does not rerun the study.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || \
	  { echo "error: the study needs Python 3.11 ('$(PYTHON)' is $$($(PYTHON) --version 2>&1)); try: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]' -c $(CONSTRAINTS)
	$(PY) -m ipykernel install --sys-prefix --name scxnn --display-name "Python 3 (scxnn)" >/dev/null
	@$(NBSTRIPOUT_INSTALL)
	@touch $@

# The nbstripout git filter, on after either README command (both build the venv), so a notebook run
# in `make lab` is committed without its outputs. --keep-id: the committed cell ids ("04-2") stay, so
# installing the filter does not show every notebook as modified (the committed ones are its fixed points).
NBSTRIPOUT_INSTALL = if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  $(VENV)/bin/nbstripout --install --attributes .gitattributes && \
	  git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id'; fi

# Profile facts the Makefile needs (findings, the params files it is made of) come from
# scxnn.config itself, so the Makefile never re-implements the params logic.
# .make/<profile>.settings holds the settings the results depend on (all but `launch` and
# `description`) and is rewritten only when they change; the study's targets depend on it, not on
# the params files, so a new time limit for the cluster jobs or a comment reruns nothing.
# Each make writes its own temporary ($$$$: the shell's PID), so that two makes remaking it at once
# (a dry run beside a running build, in the tests) never move each other's half-written file.
.make/%.mk: params/*.yaml scxnn/config.py scxnn/variants.py | $(STAMP)
	@mkdir -p .make
	@$(PY) -m scxnn config --profile $* --make --settings-file .make/$*.settings > $@.$$$$.tmp && mv $@.$$$$.tmp $@ || { rm -f $@.$$$$.tmp; exit 1; }
# Written with .make/<profile>.mk, which make remakes before anything else. No prerequisites of its
# own: its time stamp is that of the last change of the settings.
.make/%.settings: ;
SETTINGS := .make/$(PROFILE).settings

NO_PIPELINE_GOALS := help clean clean-profile venv setup test lab lock trunk
ifneq ($(filter-out $(NO_PIPELINE_GOALS),$(or $(MAKECMDGOALS),help)),)
include .make/$(PROFILE).mk
endif

# ---------------------------------------------------------------- study steps
# Modules each step calls; wildcard so that a module added later is tracked without editing this.
CORE_SRC := $(wildcard scxnn/__init__.py scxnn/config.py scxnn/utils.py scxnn/pipeline.py scxnn/thesis.py scxnn/weights/__init__.py)
SRC_01 := $(CORE_SRC) $(wildcard scxnn/metrics.py scxnn/dicom.py scxnn/pixels.py scxnn/batch.py scxnn/sources.py scxnn/data.py scxnn/reports.py scxnn/gallery.py scxnn/synth/*.py scxnn/adapters/*.py scxnn/plausibility.py)
SRC_02 := $(CORE_SRC) $(wildcard scxnn/weights/densenet121_trunk.pt scxnn/data.py scxnn/dataset.py scxnn/pixels.py scxnn/sources.py scxnn/models.py scxnn/checkpoints.py scxnn/hardware.py scxnn/pretrain.py scxnn/train.py scxnn/loop.py scxnn/labels.py scxnn/losses.py scxnn/distributed.py scxnn/metrics.py scxnn/inference.py scxnn/reports.py scxnn/training_figures.py)
SRC_03 := $(CORE_SRC) $(wildcard scxnn/data.py scxnn/dataset.py scxnn/models.py scxnn/checkpoints.py scxnn/hardware.py scxnn/inference.py scxnn/ensemble.py scxnn/metrics.py scxnn/ood.py scxnn/pixels.py)
SRC_04 := $(CORE_SRC) $(wildcard scxnn/ensemble.py scxnn/metrics.py scxnn/ood.py scxnn/evaluation.py scxnn/reports.py scxnn/figures.py scxnn/study_tables.py scxnn/variants.py scxnn/data.py scxnn/cam.py scxnn/checkpoints.py scxnn/dataset.py scxnn/dicom.py scxnn/hardware.py scxnn/inference.py scxnn/localisation.py scxnn/models.py scxnn/pixels.py)
SRC_06 := $(CORE_SRC) $(wildcard scxnn/dicom.py scxnn/pixels.py scxnn/sources.py scxnn/data.py scxnn/dataset.py scxnn/models.py scxnn/checkpoints.py scxnn/train.py scxnn/loop.py scxnn/cam.py scxnn/localisation.py scxnn/metrics.py scxnn/ensemble.py scxnn/evaluation.py scxnn/reports.py scxnn/figures.py scxnn/study_tables.py scxnn/hardware.py scxnn/inference.py scxnn/ood.py scxnn/variants.py)
SRC_07 := $(CORE_SRC) $(wildcard scxnn/data.py scxnn/ensemble.py scxnn/metrics.py scxnn/evaluation.py scxnn/variants.py scxnn/reports.py scxnn/figures.py scxnn/study_tables.py scxnn/cam.py scxnn/checkpoints.py scxnn/dataset.py scxnn/dicom.py scxnn/hardware.py scxnn/inference.py scxnn/localisation.py scxnn/models.py scxnn/ood.py scxnn/pixels.py)
SRC_08 := $(CORE_SRC) $(wildcard scxnn/checkpoints.py scxnn/metrics.py scxnn/models.py scxnn/data.py scxnn/adapters/*.py scxnn/batch.py scxnn/inference.py scxnn/ensemble.py scxnn/evaluation.py scxnn/cam.py scxnn/external.py scxnn/transfer.py scxnn/study_tables.py scxnn/figures.py scxnn/reports.py scxnn/dataset.py scxnn/dicom.py scxnn/hardware.py scxnn/localisation.py scxnn/ood.py scxnn/pixels.py scxnn/plausibility.py scxnn/trained_run.py scxnn/variants.py)
SRC_V := $(CORE_SRC) $(wildcard scxnn/weights/densenet121_trunk.pt scxnn/data.py scxnn/dataset.py scxnn/pixels.py scxnn/batch.py scxnn/sources.py scxnn/models.py scxnn/checkpoints.py scxnn/hardware.py scxnn/pretrain.py scxnn/train.py scxnn/loop.py scxnn/labels.py scxnn/losses.py scxnn/distributed.py scxnn/inference.py scxnn/ensemble.py scxnn/metrics.py scxnn/evaluation.py scxnn/variants.py)

NB01 := $(EXEC)/01_preprocessing.ipynb
NB02 := $(FINDINGS:%=$(EXEC)/02_train_disease_model/%.ipynb)
NB03 := $(EXEC)/03_svm_ensemble.ipynb
NB04 := $(EXEC)/04_evaluation.ipynb
NB05 := $(EXEC)/05_novel_diseases.ipynb
NB06 := $(EXEC)/06_gradcam.ipynb
NB07 := $(EXEC)/07_ablations.ipynb
NB08 := $(EXEC)/08_transfer.ipynb
ALL_NBS := $(NB01) $(NB02) $(NB03) $(NB04) $(NB05) $(NB06) $(NB07) $(NB08)
INDEX := reports/README.md

$(NB01): notebooks/01_preprocessing.ipynb $(SETTINGS) $(SRC_01) | $(STAMP)
	$(call RUN_NB,preprocess,01_preprocessing) $< $@ -p profile $(PROFILE)

$(EXEC)/02_train_disease_model/%.ipynb: notebooks/02_train_disease_model.ipynb $(NB01) $(SETTINGS) $(SRC_02) | $(STAMP)
	$(call RUN_NB,train,train-$*,--finding $*) $< $@ -p profile $(PROFILE) -p finding $*

$(NB03): notebooks/03_svm_ensemble.ipynb $(NB02) $(SETTINGS) $(SRC_03) | $(STAMP)
	$(call RUN_NB,notebook,03_svm_ensemble) $< $@ -p profile $(PROFILE)

# Whole-pipeline variants (params: variants.runs), one target per distinct settings hash; the 2-class
# vs 3-class pair feeds Tables 7-8 in 04. A variant equal to the profile reuses its trained models.
$(VARIANTS_DIR)/%/result.json: $(NB01) $(SETTINGS) $(SRC_V) | $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(call ON,variant,variant-$*)$(PY) -m scxnn variant --profile $(PROFILE) --hash $* --no-progress
$(VARIANT_REUSES_MODELS): $(NB02)
# No variant waits for step 03. make's walk reaches the variants only once all 13 models have
# started, so under -jN they fill the cores the last models leave idle; step 03 ends up last, which
# is cheap now that each model scores its own films in step 02 (scxnn.inference). Before that, 03
# scored every film itself and, started last, ran alone on one core (11.7 of the demo's 78 fp32 min).

$(NB04): notebooks/04_evaluation.ipynb $(NB03) $(VARIANT_two_class) $(VARIANT_three_class) $(SETTINGS) $(SRC_04) | $(STAMP)
	$(call RUN_NB,notebook,04_evaluation) $< $@ -p profile $(PROFILE)

$(NB05): notebooks/05_novel_diseases.ipynb $(NB03) $(SETTINGS) $(SRC_04) | $(STAMP)
	$(call RUN_NB,notebook,05_novel_diseases) $< $@ -p profile $(PROFILE)

$(NB06): notebooks/06_gradcam.ipynb $(NB02) $(SETTINGS) $(SRC_06) | $(STAMP)
	$(call RUN_NB,notebook,06_gradcam) $< $@ -p profile $(PROFILE)

# The real films live outside the repository (../shared); the notebook says so when they are absent.
$(NB08): notebooks/08_transfer.ipynb $(NB03) $(SETTINGS) $(SRC_08) | $(STAMP)
	$(call RUN_NB,notebook,08_transfer) $< $@ -p profile $(PROFILE)

$(NB07): notebooks/07_ablations.ipynb $(NB01) $(VARIANT_ABLATIONS) $(SETTINGS) $(SRC_07) | $(STAMP)
	$(call RUN_NB,notebook,07_ablations) $< $@ -p profile $(PROFILE)

# ---------------------------------------------------------------- entry points
.PHONY: help setup venv trunk reports preprocess train variants ensemble evaluate novel gradcam ablations transfer test lab lock clean clean-profile

help: ## list the targets
	@echo "SCXNN study - make TARGET [PROFILE=demo|smoke|thesis|...]  (default PROFILE=demo)"
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):.*## (.*)/  \1\t\2/' | expand -t 22
	@echo "  train-FINDING         train one finding's model, e.g. make train-pneumothorax"

setup: $(STAMP) ## create .venv, install the pinned packages, the notebook kernel and the nbstripout git filter
	@$(NBSTRIPOUT_INSTALL)

venv: $(STAMP) ## create or update .venv only

reports: $(ALL_NBS) $(INDEX) ## run the whole study for PROFILE: every notebook, then the index reports/README.md

$(INDEX): $(ALL_NBS) scxnn/reports.py | $(STAMP)
	$(PY) -m scxnn index --profile $(PROFILE)

preprocess: $(NB01) ## 01: synthetic data / adapters, preprocessing, Table 1
train: $(NB02) ## 02: train the per-finding models (all findings; make -j trains them in parallel)
train-%: $(EXEC)/02_train_disease_model/%.ipynb ;
ensemble: $(NB03) ## 03: logits table, SVM, definite-normal operating point
variants: $(VARIANT_RESULTS) ## whole-pipeline variants (params variants.runs), e.g. the 2-class models of Tables 7-8
evaluate: $(NB04) ## 04: Tables 2, 3, 7, 8 with 95% CIs, ROC figures
novel: $(NB05) ## 05: unseen findings (Table 9)
gradcam: $(NB06) ## 06: Grad-CAM (Figure 5) and localization
transfer: $(NB08) ## 08: the run scored on real NIH films it never saw, beside its synthetic figures (needs ../shared)
ablations: $(NB07) ## 07: Tables 4, 5, 6 (whole-pipeline variants; make -j2 trains two at a time)

# The shipped trunk (scxnn/weights/densenet121_trunk.pt, its .sha256 and TRUNK_CARD.md): phony, and
# nothing depends on it, so `make reports` never rebuilds it; its data and run live under
# data/trunk and runs/trunk, and a killed pretraining resumes.
trunk: $(STAMP) ## rebuild the shipped trunk (params/trunk.yaml: its own synthetic draw, then the pretraining; CPU: about an hour)
	$(PY) -m scxnn trunk --profile trunk

test: $(STAMP) ## unit tests, then every notebook with PROFILE=smoke through papermill
	$(PY) -m pytest

lab: $(STAMP) ## open JupyterLab in the project venv with the scxnn kernel
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/

lock: ## re-resolve the pins in .ci/constraints.txt from pyproject.toml in a scratch venv
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	{ sed -n '1,3p' $(CONSTRAINTS); .lockvenv/bin/python -m pip freeze --exclude-editable | tr 'A-Z_' 'a-z-' | sort; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS) && rm -rf .lockvenv

clean-profile: ## delete PROFILE's executed notebooks, generated data and runs (regenerable)
	rm -rf reports/executed/$(PROFILE) reports/tables/$(PROFILE) reports/figures/$(PROFILE) data/$(PROFILE) runs/$(PROFILE) .make/$(PROFILE).mk

clean: ## delete every generated file except .venv
	rm -rf reports/executed/*/ reports/tables/*/ reports/figures/*/ reports/README.md data runs .make .pytest_cache
