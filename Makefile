# MTDnet reproduction. `make setup`, `make test`, `make demo`; see README.md and `make help`.
SHELL := /bin/bash
ifeq ($(origin VENV),undefined)
VENV := $(CURDIR)/.venv
endif

# No defaults here: a variable left out is an option left out, and the tools' one set of
# defaults applies (mtdnet/cli.py: DATASET=synthetic VARIANT=mtdnet PROFILE=scratch SPLIT=paper).

# Every value a user gives (make train WEIGHTS=...) reaches the tools as typed, as one
# argument: make passes it in the environment as ARG_<NAME>, copied with $(value ...) so that
# make expands nothing in it, and the recipes quote it ("$$ARG_WEIGHTS"). No value is ever
# pasted into the shell's text: quotes, spaces, $ and backticks in it are plain characters.
# A *_ARGS value is split into words by tools/with_args.py as a shell would (quotes group
# words), with nothing in it expanded or run.
VARS := VENV DATASET PROFILE VARIANT SPLIT SET DATA_ROOT NUM_SPLITS SEED DATA_ARGS ITERS WEIGHTS GPU \
        RESTART TRAIN_ARGS SPLITS PROTOCOL TRIALS MODEL ON SELECT EVAL_ARGS REPORT_ARGS BENCH_ARGS \
        DEMO_ARGS PYTEST_ARGS TABLE1_ARGS TAG SOURCE DRY_RUN
unexport $(VARS)
$(foreach v,$(VARS),$(eval export ARG_$(v) = $$(value $(v))))
# "$(call opt,--iters,ITERS)": the option with the value when ITERS is given, else nothing.
opt = $(if $(value $(2)),$(1) "$$ARG_$(2)")
# A yes/no variable (GPU=1, RESTART=off): the value as typed, which the tool reads (1 / yes /
# true / on, 0 / no / false / off) or refuses.
flag = $(if $(value $(2)),$(1)="$$ARG_$(2)")

PY = "$$ARG_VENV/bin/python"
NEED_VENV = @test -x $(PY) || { echo "no $$ARG_VENV: run 'make setup' first" >&2; exit 1; }
# The tool replaces the recipe shell (exec), so make is its parent; it dies with make
# (core/proc.py), even when make is killed outright.
# The recipe is not echoed (@): users see the tool's output, not our plumbing.
ACTIVATE = @source "$$ARG_VENV/bin/activate" && MTDNET_MAKE_PID=$$PPID exec

.PHONY: setup test demo prototxt data train eval report table1 bench help

help:
	@echo "make setup      system packages, the pinned Caffe build (cached), .venv"
	@echo "make test       the test suite (pytest) [PYTEST_ARGS=...]"
	@echo "make demo       the whole job on the built-in synthetic data in ~2 minutes: data, a tiny"
	@echo "                MTDnet, evaluation, report (in data/demo/ and runs/demo/) [DEMO_ARGS=...]"
	@echo "make data       prepare a dataset into data/<dataset>-<profile>-<split>/"
	@echo "                  DATASET PROFILE SPLIT [DATA_ROOT=<folder> NUM_SPLITS=10 SEED=<n> SET= DATA_ARGS=]"
	@echo "make train      train a run into runs/<dataset>-<variant>-<profile>[-<split>]/ (resumes)"
	@echo "                  DATASET VARIANT PROFILE [SPLIT ITERS=<n> WEIGHTS=<caffemodel> RESTART=1 GPU=1"
	@echo "                  SET= TAG=<label> SOURCE=cuhk03detected TRAIN_ARGS=]"
	@echo "make eval       CMC of a trained run: DATASET VARIANT PROFILE [SPLIT SPLITS=random0,... PROTOCOL"
	@echo "                  TRIALS=10 MODEL=<caffemodel> ON=val SELECT=1 SET= EVAL_ARGS=]"
	@echo "make report     runs/report.md: Table 1 with our numbers beside the paper's [REPORT_ARGS=]"
	@echo "make table1     every stage of the paper for the datasets present, resumable, then the report:"
	@echo "                  PROFILE=scratch [GPU=1 WEIGHTS=<ImageNet caffemodel> DRY_RUN=1 SPLITS=random0,...]"
	@echo "make prototxt   regenerate the committed prototxt/ and solvers/ (paper, scratch)"
	@echo "make bench      speed and memory on this machine -> runs/bench/results.json [BENCH_ARGS=--quick]"
	@echo "SET='field=value ...' overrides profile fields in data / train / eval (recorded, tags the run)"
	@echo "The *_ARGS take the tool's own options: python tools/<prepare_data|train|evaluate>.py --help"
	@test -x $(PY) && $(PY) tools/choices.py || echo "(run 'make setup' to list the valid values)"

# VENV is one of VARS (unexported, passed as ARG_VENV): hand it to setup.sh by name.
setup:
	@VENV="$$ARG_VENV" bash scripts/setup.sh

test:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py PYTEST_ARGS python -m pytest -q tests

# make demo [DEMO_ARGS="--iters 1000"]: data/demo/, runs/demo/ (never a user's data or runs)
demo:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py DEMO_ARGS python tools/demo.py

prototxt:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py - python tools/generate_prototxt.py

# make data [DATASET=synthetic|viper|cuhk01|cuhk03|cuhk03detected|ilids|prid2011] [DATA_ROOT=<dir>] [PROFILE=scratch]
#           [SPLIT=paper|random|random<k>|testsets|testsets<k>] [NUM_SPLITS=10] [SEED=<n>] [DATA_ARGS=...]
data:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py DATA_ARGS python tools/prepare_data.py $(call opt,--dataset,DATASET) \
	  $(call opt,--profile,PROFILE) $(call opt,--split,SPLIT) $(call opt,--set,SET) $(call opt,--data-root,DATA_ROOT) \
	  $(call opt,--num-splits,NUM_SPLITS) $(call opt,--seed,SEED)

# make train DATASET=<d> VARIANT=<v> PROFILE=<p> [SPLIT=paper] [WEIGHTS=<caffemodel>] [ITERS=<n>]
#            [RESTART=1] [GPU=1] [TRAIN_ARGS=--source-split random0]
train:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py TRAIN_ARGS python tools/train.py $(call opt,--dataset,DATASET) \
	  $(call opt,--variant,VARIANT) $(call opt,--profile,PROFILE) $(call opt,--split,SPLIT) $(call opt,--set,SET) \
	  $(call opt,--iters,ITERS) $(call opt,--weights,WEIGHTS) $(call flag,--restart,RESTART) $(call flag,--gpu,GPU) \
	  $(call opt,--tag,TAG) $(call opt,--source,SOURCE)

# make eval DATASET=<d> VARIANT=<v> PROFILE=<p> [SPLIT=paper|random<k>|random] [SPLITS=random0,random1,...]
#           [PROTOCOL=paper|random] [TRIALS=10] [MODEL=<caffemodel>] [ON=val] [SELECT=1] [EVAL_ARGS=...]
#           ON=val ranks the validation identities; SELECT=1 picks the snapshot on them, then tests it
eval:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py EVAL_ARGS python tools/evaluate.py $(call opt,--dataset,DATASET) \
	  $(call opt,--variant,VARIANT) $(call opt,--profile,PROFILE) $(call opt,--split,SPLIT) $(call opt,--set,SET) \
	  $(call opt,--splits,SPLITS) $(call opt,--protocol,PROTOCOL) $(call opt,--trials,TRIALS) \
	  $(call opt,--model,MODEL) $(call opt,--on,ON) $(call flag,--select-on-val,SELECT) $(call opt,--tag,TAG)

# make report [REPORT_ARGS="--runs-dir <dir> --out <dir>"]: runs/report.md, report_cmc[_<dataset>].png, report_ranked_<dataset>.png
report:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py REPORT_ARGS python tools/report.py

# make table1 PROFILE=scratch [GPU=1] [WEIGHTS=<ImageNet caffemodel>] [DRY_RUN=1]: every stage of the
#   paper for the datasets present (resumable), then make report; DRY_RUN=1 prints the plan and its times;
#   SPLITS=random0,random1,random2 also trains and evaluates each target's MTDnet on those splits
table1:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py TABLE1_ARGS python tools/table1.py $(call opt,--profile,PROFILE) \
	  $(call opt,--weights,WEIGHTS) $(call flag,--gpu,GPU) $(call flag,--dry-run,DRY_RUN) $(call opt,--splits,SPLITS)

# make bench [BENCH_ARGS="--parts caffe,scoring --blocks paper=8x8 ..."]: runs/bench/results.json (tools/bench.py --help)
bench:
	$(NEED_VENV)
	$(ACTIVATE) python tools/with_args.py BENCH_ARGS python tools/bench.py
