# syntax=docker/dockerfile:1
# latentserve images, one Dockerfile, two targets:
#   docker build --target serve -t latentserve:serve .   # the API: onnxruntime, no torch (~300 MB)
#   docker build --target train -t latentserve:train .   # the trainer: torch (CPU wheel by default)
# docker compose builds both (see docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim

# --- base: what both runtime images share ---------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# A fixed non-root uid/gid, so a store volume written by the trainer is readable by the api, and the same
# numbers can be named in a Kubernetes securityContext. USER names them by number: a runtime can then see that
# the user is not root without reading /etc/passwd.
RUN groupadd --system --gid 10001 latentserve \
 && useradd --system --uid 10001 --gid latentserve --no-create-home --home-dir /app \
            --shell /usr/sbin/nologin latentserve
WORKDIR /app

# --- serve-build: a virtualenv with the serve extra only ----------------------------------------------------
FROM base AS serve-build
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
# The project itself; its dependencies' bounds live in pyproject.toml (DL3013 asks for a version on every name).
# hadolint ignore=DL3013
RUN pip install ".[serve]"

# --- serve: the API image -------------------------------------------------------------------------------
FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
# The shipped zoo. Docker copies it into an empty named volume mounted here on first use, so a fresh
# `docker compose up` serves the shipped models before any trainer has run.
COPY --chown=latentserve:latentserve models_store /models_store
ENV LATENTSERVE_HOST=0.0.0.0 \
    LATENTSERVE_PORT=8000 \
    LATENTSERVE_STORE=/models_store
USER 10001:10001
# 8000: HTTP (/v1, V2, metrics); 8001: the V2 gRPC protocol (LATENTSERVE_GRPC_PORT, 0 = off)
EXPOSE 8000 8001
# slim has no curl: ask Python. urlopen raises on any non-2xx answer, so 503 (not ready, draining) fails.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('LATENTSERVE_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "service"]

# --- train-build: torch first, pinned, from the CPU index, then the train extra ---------------------------------
FROM base AS train-build
RUN python -m venv /opt/venv
# PyPI's Linux torch wheel bundles the CUDA libraries (gigabytes); the CPU index has the same version without
# them. For a GPU trainer build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX_URL} torch==2.13.0
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
# hadolint ignore=DL3013
RUN pip install ".[train]"

# --- train: the trainer image ---------------------------------------------------------------------------
FROM base AS train
COPY --from=train-build /opt/venv /opt/venv
COPY --chown=latentserve:latentserve models_store /models_store
# The example configs, read-only; run folders (metrics.jsonl, checkpoints) go to ./runs, the one folder under
# /app (root's) that the trainer may write: compose mounts a volume there, which starts out owned alike.
COPY configs ./configs
RUN install -d -o 10001 -g 10001 /app/runs
USER 10001:10001
# `docker compose --profile train run --rm trainer zoo --store /models_store`,
# `... trainer fit configs/ae-digits.toml --store /models_store`, `... trainer export-triton --out DIR`
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]
