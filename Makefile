# One command runs the app, one runs the tests. Both create .venv and install what is missing.
#   make run                      the local host on http://127.0.0.1:3030 with one worker (see README)
#   make run ARGS="--workers 2"   options of python -m apphost (PORT, NSCFATE_DATA_DIR, ... from the environment)
#   make test                     the fast offline suite, in Chromium and on PostgreSQL too
# Python 3.11 or 3.12 (pyproject.toml): the first of python3.11, python3.12, python3 that runs and is one
# (a pyenv shim can exist for a version it will not run), or PYTHON=...
PY_SUPPORTED := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3.11 python3.12 python3,$(shell $(p) -c '$(PY_SUPPORTED)' 2>/dev/null && echo $(p))) python3)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test test-all test-setup venv clean-venv

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c '$(PY_SUPPORTED)' || { \
	  echo "NSC Fate needs Python 3.11 or 3.12; $(PYTHON) is $$($(PYTHON) -V 2>&1). Install python3.11, or: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11"; exit 1; }
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
