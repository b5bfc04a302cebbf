# Thin wrappers; the README shows them. Each target makes its own virtual environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run train-env test models models-textures bench bench-quality bench-textures bench-soak lint schema docs \
	grpc-proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving needs no torch: the serve extra only.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve]'
	touch $@

# Training: torch pinned and installed first (unpinned, pip takes the newest torch and its CUDA packages),
# then the train extra. `make run` never needs it.
$(VENV)/.train: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train]'
	touch $@

# Torch is pinned and installed first, so nothing pulls a CUDA build.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(VENV)/.serve $(VENV)/.train $@

run: $(VENV)/.serve
	LATENTSERVE_HOST=$(HOST) LATENTSERVE_PORT=$(PORT) $(BIN)/python -m service

# The torch environment for `.venv/bin/python -m training ...` (the README's Training section).
train-env: $(VENV)/.train

test: $(VENV)/.dev
	$(BIN)/python -m pytest -n 2 --timeout 300

models: $(VENV)/.train
	$(BIN)/python -m training zoo --store models_store --fresh

# The DRAEM-style texture models (draem-brick, -grass, -gravel; issue 20): apart from `make models`, whose
# 5-minute budget they would break. bench/results/textures.md reports the time they take.
models-textures: $(VENV)/.train
	$(BIN)/python -m training zoo --store models_store --fresh --only draem-brick draem-grass draem-gravel \
		--report models_store/ZOO-textures.md

# Ours as shipped, then against MLServer, KServe, LitServe and BentoML (their venvs are built once into
# runs/bench/peers-venvs: about 2 minutes the first time, printed as they build).
bench: $(VENV)/.dev
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/quantized.py

bench-quality: $(VENV)/.dev
	$(BIN)/python bench/quality.py

# Real-photo anomaly benchmark: ours against anomalib's DRAEM (its own venv, built once) and baselines.
bench-textures: $(VENV)/.dev
	$(BIN)/python bench/anomaly_textures.py

bench-soak: $(VENV)/.dev
	$(BIN)/python bench/soak.py

bench-peers: $(VENV)/.dev ; $(BIN)/python bench/peers.py

schema: $(VENV)/.dev
	$(BIN)/python -m service.store.schema --write models_store/README.md

# service/grpc/inference.proto -> inference_pb.py (committed; tests/service/test_grpc_wire.py checks it is fresh)
grpc-proto: $(VENV)/.dev
	$(BIN)/python -m service.grpc.generate

# Run the README's API examples against a fresh server; rewrite their answers and the pictures from it.
docs: $(VENV)/.dev
	$(BIN)/python docs/readme_examples.py --write

lint: $(VENV)/.dev
	$(BIN)/ruff check service training tests bench
	$(BIN)/mypy service training

clean:
	rm -rf $(VENV) .pytest_cache
