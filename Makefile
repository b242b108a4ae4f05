# MTDnet reproduction. `make setup` then `make test`; see README.md.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
ACTIVATE := source $(VENV)/bin/activate &&

DATASET ?= synthetic
PROFILE ?= cpu
VARIANT ?= mtdnet
SPLIT ?= paper

.PHONY: setup test prototxt data train eval report bench clean-caffe-cache help

help:
	@echo "make setup      system packages, Caffe build (cached), .venv"
	@echo "make test       the test suite (pytest)"
	@echo "make prototxt   regenerate prototxt/ and solvers/"

setup:
	@bash scripts/setup.sh

test:
	@test -x $(PY) || { echo "no $(VENV): run 'make setup' first" >&2; exit 1; }
	$(ACTIVATE) python -m pytest -q $(PYTEST_ARGS) tests
