# make test   — the whole CPU test suite (creates .venv/ on first use)
# make demo   — corpus -> tokenizer -> indexed data -> tiny Llama CPT on 2 CPU ranks -> HF export
# make almr-study — the demo's data and base model -> ALMR x LR sweep -> fitted relation (docs/ALMR.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build from local disk; on a GPU machine set TORCH_SPEC=torch (or keep the image's torch).
TORCH_SPEC ?= torch==2.13.0

.PHONY: test test-unit test-distributed demo almr-study bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra --durations=15

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

test-distributed: $(VENV)/.installed
	$(PY) -m pytest -q tests/distributed

demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/demo.sh

almr-study: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/almr_study.sh

bench: $(VENV)/.installed
	$(PY) bench/prepare_bench.py
	$(PY) bench/convert_bench.py

clean:
	rm -rf runs outputs .pytest_cache
