# The two commands a fresh machine needs: `make run` (set up, then serve the app on its embedded defaults)
# and `make test` (set up, then run the whole test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, pinned: anything unpinned that depends on torch would otherwise pull a CUDA build
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

.PHONY: setup run test lint system-deps
setup: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

run: setup
	$(PY) app.py

lint: setup
	$(PY) -m ruff check .

test: setup system-deps lint
	$(PY) -m pytest -q
