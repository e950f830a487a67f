# One command runs the app, one runs the tests. Both create .venv and install what is missing.
#   make run                      the local host on http://127.0.0.1:3030 with one worker (see README)
#   make run ARGS="--workers 2"   options of python -m apphost (PORT, NSCFATE_DATA_DIR, ... from the environment)
#   make test                     the fast offline suite, in Chromium and on PostgreSQL too
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test test-all test-setup venv clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[app,test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m apphost $(ARGS)

# System packages the tests drive: Debian's chromium and postgresql (installed when missing and root).
test-setup:
	./scripts/test-setup.sh

test: $(STAMP) test-setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

# Everything, including slow tests (real training runs).
test-all: $(STAMP) test-setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q --runslow

clean-venv:
	rm -rf $(VENV)
