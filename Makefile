# One command runs the app, one runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-all venv clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[app,test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) scripts/run_demo.py

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

# Everything, including slow tests (real training runs).
test-all: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q --runslow

clean-venv:
	rm -rf $(VENV)
