# One-command entry points: `make demo` (set up + precompute + train on data/demo) and
# `make test` (set up + lint + tests). Both create or update the virtual environment .venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed on its own first so that pip does not resolve a multi-GB CUDA build.
# On this project's machines torch==2.13.0 is a local CPU wheel; elsewhere override, e.g.
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
# The tests also run the torchvision models (the `torchvision` extra), which need a torch and
# torchvision built as a pair; on this project's machines that pair lies on local disk.
TORCHVISION_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= runs/demo
DEMO_ITERS ?= 300
# torch threads of the demo's training; empty: fit chooses from the usable cores and the
# loader workers (and prints it). On a busy machine `make demo THREADS=1` is faster.
THREADS ?=

.PHONY: setup setup-test demo test lint bench clean

# The `viz` extra (matplotlib) draws the figures the README shows (`show`, `plot`).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[viz]"
	touch $@

# The adapter tests (tests/test_adapters.py) need the frameworks: the `adapters` extra
# (lightning, segmentation-models-pytorch, torchgeo, mmsegmentation + mmengine), plus an
# mmcv, which no extra installs (users bring their own full build): the tests take
# mmcv-lite (no compiled ops; the tests that need them are skipped) unless one is there.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip install $(TORCHVISION_SPEC)
	$(PY) -m pip install -e ".[test,viz,torchvision,adapters]"
	$(PY) -c "import mmcv" 2>/dev/null || $(PY) -m pip install "mmcv-lite>=2.0,<2.2"
	touch $@

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

demo: setup
	$(VENV)/bin/npa-precompute run data/demo/gts_eroded_for_participants \
		--images data/demo/top --out $(DEMO_OUT)/store.zarr --preset isprs \
		--k 8,16,32,64 --transform log10:L=0.5 --transform norm:L=0.5 --workers 2
	$(VENV)/bin/npa-train fit --store $(DEMO_OUT)/store.zarr --weights k32_log10_L0.5 \
		--loss npa --iters $(DEMO_ITERS) --batch 4 --crop 256 --out $(DEMO_OUT)/fit --seed 0 \
		--overwrite $(if $(THREADS),--threads $(THREADS))

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest workers (pytest-xdist); modules that time or kill processes share one worker
# (tests/conftest.py SERIAL_MODULES). `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test: setup-test lint
	$(PY) -m pytest --durations=10 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)

bench: setup
	$(PY) -m pip install -e ".[bench,dask]"
	$(PY) benchmarks/bench_affinity.py --write
	$(PY) benchmarks/bench_pipeline.py --write
	$(PY) benchmarks/bench_blockwise.py --write
	$(PY) benchmarks/bench_online.py --write
	$(PY) benchmarks/online_vs_store.py --write

clean:
	rm -rf runs .pytest_cache
