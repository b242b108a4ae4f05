# MTDnet reproduction. `make setup` then `make test`; see README.md.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
ACTIVATE := source $(VENV)/bin/activate &&
NEED_VENV = @test -x $(PY) || { echo "no $(VENV): run 'make setup' first" >&2; exit 1; }

DATASET ?= synthetic
PROFILE ?= cpu
VARIANT ?= mtdnet
SPLIT ?= paper
# SET="base_lr=0.005 shift=8": profile fields overridden for this experiment (data, train, eval)
SET_ARG = $(if $(SET),--set '$(SET)')

.PHONY: setup test prototxt data train eval report bench help

help:
	@echo "make setup      system packages, Caffe build (cached), .venv"
	@echo "make test       the test suite (pytest)"
	@echo "make prototxt   regenerate the committed prototxt/ and solvers/ (paper, scratch)"
	@echo "make data       prepare DATASET (default synthetic) for PROFILE/SPLIT into data/"
	@echo "make train      train a run: DATASET VARIANT PROFILE [SPLIT WEIGHTS ITERS GPU=1]"
	@echo "make eval       CMC of a trained run: DATASET VARIANT PROFILE [SPLIT PROTOCOL TRIALS MODEL]"
	@echo "make report     runs/report.md: Table 1 with our numbers beside the paper's"
	@echo "SET='field=value ...' overrides profile fields in data / train / eval (recorded, tags the run)"
	@echo "make bench      speed and memory on this machine -> bench/results.json [BENCH_ARGS=--quick]"

setup:
	@bash scripts/setup.sh

test:
	$(NEED_VENV)
	$(ACTIVATE) python -m pytest -q $(PYTEST_ARGS) tests

prototxt:
	$(NEED_VENV)
	$(ACTIVATE) python tools/generate_prototxt.py

# make data [DATASET=synthetic|viper|cuhk01|cuhk03|cuhk03detected|ilids|prid2011] [DATA_ROOT=<dir>] [PROFILE=cpu]
#           [SPLIT=paper|random|random<k>|testsets|testsets<k>] [NUM_SPLITS=10] [SEED=<n>] [DATA_ARGS=...]
data:
	$(NEED_VENV)
	$(ACTIVATE) python tools/prepare_data.py --dataset $(DATASET) --profile $(PROFILE) --split $(SPLIT) $(SET_ARG) \
	  $(if $(DATA_ROOT),--data-root '$(DATA_ROOT)') $(if $(NUM_SPLITS),--num-splits $(NUM_SPLITS)) \
	  $(if $(SEED),--seed $(SEED)) $(DATA_ARGS)

# make train DATASET=<d> VARIANT=<v> PROFILE=<p> [SPLIT=paper] [WEIGHTS=<caffemodel>] [ITERS=<n>] [GPU=1]
#            [TRAIN_ARGS=--source-split random0]
train:
	$(NEED_VENV)
	$(ACTIVATE) python tools/train.py --dataset $(DATASET) --variant $(VARIANT) --profile $(PROFILE) \
	  --split $(SPLIT) $(SET_ARG) $(if $(ITERS),--iters $(ITERS)) $(if $(WEIGHTS),--weights '$(WEIGHTS)') $(if $(GPU),--gpu) \
	  $(TRAIN_ARGS)

# make eval DATASET=<d> VARIANT=<v> PROFILE=<p> [SPLIT=paper|random<k>|random] [SPLITS=random0,random1,...]
#           [PROTOCOL=paper|random] [TRIALS=10] [MODEL=<caffemodel>] [ON=val] [SELECT=1] [EVAL_ARGS=...]
#           ON=val ranks the validation identities; SELECT=1 picks the snapshot on them, then tests it
eval:
	$(NEED_VENV)
	$(ACTIVATE) python tools/evaluate.py --dataset $(DATASET) --variant $(VARIANT) --profile $(PROFILE) \
	  --split $(SPLIT) $(SET_ARG) $(if $(SPLITS),--splits $(SPLITS)) $(if $(PROTOCOL),--protocol $(PROTOCOL)) \
	  $(if $(TRIALS),--trials $(TRIALS)) $(if $(MODEL),--model '$(MODEL)') $(if $(ON),--on $(ON)) \
	  $(if $(SELECT),--select-on-val) $(EVAL_ARGS)

# make report [REPORT_ARGS=--runs-dir <dir>]: runs/report.md, report_cmc.png, report_ranked_<dataset>.png
report:
	$(NEED_VENV)
	$(ACTIVATE) python tools/report.py $(REPORT_ARGS)

# make bench [BENCH_ARGS="--parts scoring,cmc --blocks paper=8x8 ..."]: bench/results.json (tools/bench.py --help)
bench:
	$(NEED_VENV)
	$(ACTIVATE) python tools/bench.py $(BENCH_ARGS)
