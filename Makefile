# The two commands of the README: `make demo` and `make test`. Each sets up .venv itself on a fresh machine.
PYTHON ?= python3
# torch is pinned here, not in pyproject.toml, so that a user can choose their own build: make TORCH_VERSION=2.9.1 test
TORCH_VERSION ?= 2.13.0
# Exactly one ONNX Runtime extra: cpu (onnxruntime) or gpu (onnxruntime-gpu).
ORT_EXTRA ?= cpu
EXTRAS ?= $(ORT_EXTRA),export,airflow,cluster,dev
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo cluster-demo lint test test-all docs bench gpu-check clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# ruff (lint, format) and mypy, as configured in pyproject.toml; `make test` runs them first, so CI does too.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Tests never touch a model hub or the network. On every core (pytest-xdist): --dist loadscope keeps each test module
# on one worker, so its module-scoped fixtures are built once (the session's tiny models and migrated Airflow database
# are built once per run and shared: tests/conftest.py built_once). (--dist loadgroup would ignore xdist_group marks
# here: xdist 3.8.0 renames node ids in a way pytest 9 no longer reads.) The 15 slowest tests are printed at the end.
PYTEST_WORKERS ?= auto
test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not gpu" -n $(PYTEST_WORKERS) --dist loadscope --durations=15 $(PYTEST_ARGS)

# Lake of generated posts -> demo bundle (tiny CLIP built offline, head trained on generated posts) -> Airflow on
# SQLite runs the export and daily DAGs -> scores and a summary. Everything under demo_output/.
demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m demo.run_demo

# The same pipeline on a real multi-worker Airflow: CeleryExecutor, PostgreSQL and a Valkey broker from pip wheels,
# api-server, scheduler, dag-processor, two Celery workers; one worker is killed mid-shard. Everything under
# cluster_output/ (summary.json); exits non-zero unless every check passed. See docs/cluster.md.
cluster-demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m demo.cluster_demo

# Every suite, GPU-marked tests included (they skip themselves where no CUDA device is).
test-all: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The documentation site (mkdocs-material) on http://127.0.0.1:8000, rebuilt on every save; the suite runs
# `mkdocs build --strict` (tests/test_docs.py).
docs: install
	$(BIN)/mkdocs serve

# The benchmarks (docs/benchmarks.md; minutes each; not tests). Each measures against the obvious alternative in the same run.
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_training.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_embed.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_head.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_score.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_report.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_storage.py
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),bench]"  # Daft, the peer of bench_fetch.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_fetch.py

# On a CUDA machine with onnxruntime-gpu: the gpu-marked tests and bench_score.py --device cuda (fp32, fp16), one table.
# Uses .venv when there is one, else $(PYTHON) with PYTHONPATH=. (see bench/gpu_check.sh).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist site *.egg-info
