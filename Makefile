# make test   — the whole CPU test suite (creates .venv/ on first use)
# make demo   — corpus -> tokenizer -> indexed data -> tiny Llama CPT on 2 CPU ranks -> HF export
# make almr-study — the demo's data and base model -> ALMR x LR sweep -> fitted relation (docs/ALMR.md)
# make gpu-check — on one CUDA GPU without network (see docs/BENCHMARKS.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build from local disk; on a GPU machine set TORCH_SPEC=torch (or keep the image's torch).
TORCH_SPEC ?= torch==2.13.0

.PHONY: test test-unit test-distributed test-slurm launch-examples demo almr-study bench gpu-check clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Two workers: the machine's two cores stay busy while a test waits on Slurm or on a signal.
test: $(VENV)/.installed
	$(PY) -m pytest -q -ra --durations=15 -n 2

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

test-distributed: $(VENV)/.installed
	$(PY) -m pytest -q tests/distributed

# A real single-node Slurm, started by the tests (root; Debian slurmctld slurmd slurm-client munge).
test-slurm: $(VENV)/.installed
	$(PY) -m pytest -q tests/slurm

# Regenerate launch/*.sbatch from the H100 recipes (a test fails when they are stale).
launch-examples: $(VENV)/.installed
	$(PY) -m megatron_cpt.launch.example_scripts

demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/demo.sh

almr-study: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/almr_study.sh

bench: $(VENV)/.installed
	$(PY) bench/prepare_bench.py
	$(PY) bench/convert_bench.py

# One CUDA GPU, no network, no Transformer Engine, the machine's own Python and torch: megatron-core
# from the wheel in .whl/ (pip download megatron-core==0.16.1 --python-version 3.12
# --only-binary=:all: --no-deps -d .whl/), this project with --no-deps, then tests/gpu and
# bench/gpu_throughput.py; every figure in $(GPU_CHECK_JSON). The machine's Python may be a system
# interpreter marked externally managed (PEP 668): these two --no-deps installs go into it anyway.
GPU_PYTHON ?= python3
GPU_CHECK_JSON ?= outputs/gpu_check.json
MCORE_WHEEL := $(wildcard .whl/megatron_core-0.16.1-*.whl)
gpu-check:
	@test -n "$(MCORE_WHEEL)" || { echo "gpu-check: error: no .whl/megatron_core-0.16.1-*.whl here; bring the .whl/ folder along (docs/BENCHMARKS.md)" >&2; exit 2; }
	PIP_BREAK_SYSTEM_PACKAGES=1 $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile $(MCORE_WHEEL)
	PIP_BREAK_SYSTEM_PACKAGES=1 $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-build-isolation -e .
	$(GPU_PYTHON) bench/gpu_check.py --out $(GPU_CHECK_JSON)

clean:
	rm -rf runs outputs .pytest_cache
