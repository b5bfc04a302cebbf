"""Shared fixtures: a tiny published store built once per session with the real training pipeline.

`tiny_store` holds one model per score kind that the registry offers -- `ae-tiny` (reconstruction score,
fitted GMM prior), `vae-tiny` (ELBO score, encoder with z_mean and z_logvar) and `gan-tiny` (f-AnoGAN
score with a critic graph) -- each version 1, trained for a few steps on the seeded synthetic set
(1x8x8). Training-side tests that need to mutate a store must copy it first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One BLAS/OpenMP thread per test process: the suite runs as 2 xdist workers on 2 cores, and tiny models
# run many times slower when several processes each spin up a full thread pool. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# gRPC off unless a test asks for it (tests/service/test_grpc*.py bind free ports): the suite's apps and
# `python -m service` processes run side by side, and would all claim the default port 8001.
os.environ.setdefault("LATENTSERVE_GRPC_PORT", "0")

import pytest

#: Registry name -> published name of the tiny models (those not registered are skipped).
TINY_MODELS = {"ae": "ae-tiny", "vae": "vae-tiny", "gan": "gan-tiny"}


def build_tiny_spec(model: str, store: Path, run_dir: Path, name: str | None = None, **train: object):  # noqa: ANN201
    """A RunSpec for a few-step CPU run on synthetic data (small MLP, 2 epochs x 3 batches)."""
    from training.config import RunSpec, TrainConfig

    values: dict[str, object] = dict(
        model=model, data="synthetic", epochs=2, steps_per_epoch=3, batch_size=32, device="cpu", threads=1,
        nll_k=4, prior_components=2, store=str(store), run_dir=str(run_dir), name=name, progress=False,
    )
    values.update(train)
    return RunSpec(TrainConfig(**values), {"hidden": (32, 16), "latent_dim": 4})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a store with tiny published models (see TINY_MODELS); takes a few seconds once."""
    from training.models import REGISTRY
    from training.pipeline import run

    root = tmp_path_factory.mktemp("tiny") / "models_store"
    runs = root.parent / "runs"
    for model, name in TINY_MODELS.items():
        if model in REGISTRY:
            run(build_tiny_spec(model, root, runs / name, name=name))
    return root


@pytest.fixture(scope="session")
def torch_single_thread() -> None:
    """One torch CPU thread: tiny models run faster so on a shared 2-core machine (opt in with
    `pytestmark = pytest.mark.usefixtures("torch_single_thread")`)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_spec():  # noqa: ANN201 - test modules get the builder without importing conftest
    """`build_tiny_spec` as a fixture: `tiny_spec("vae", store, run_dir, name=..., epochs=3)`."""
    return build_tiny_spec


# --- security and reliability tests (tests/security, tests/reliability) --------------------------------
# Their helpers (tests/service/storebuilder.py: onnx.helper graphs, no torch; tests/security/hardkit.py)
# are imported by bare name from both folders.
_TESTS = Path(__file__).resolve().parent
for _p in (_TESTS / "service", _TESTS / "security"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture
def anyio_backend() -> str:
    """Async tests marked `anyio` run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard fixture store (read-only by convention: copy it before changing anything)."""
    from storebuilder import build_store

    return build_store(tmp_path_factory.mktemp("hardening") / "models_store")
