"""The model registry: what the store serves, per model and per version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import StoreDep
from service.schemas import ModelDetailResponse, ModelsResponse
from service.store.repository import ModelStore, ModelVersion

router = APIRouter(prefix="/v1/models", tags=["models"])


def summary(store: ModelStore, mv: ModelVersion) -> dict[str, Any]:
    m = mv.manifest
    return {
        "name": m.name,
        "latest": store.latest(m.name).version,
        "versions": store.versions(m.name),
        "family": m.family,
        "variant": m.variant,
        "shape": list(m.data.shape),
        "latent_dim": m.latent.dim,
        "capabilities": list(m.capabilities),
        "labels": None if m.labels is None else list(m.labels.names),
        "precisions": m.precisions(),
    }


def detail(store: ModelStore, mv: ModelVersion) -> dict[str, Any]:
    m = mv.manifest
    return summary(store, mv) | {
        "version": m.version,
        "created_at": m.created_at,
        "code_version": m.code_version,
        "dataset": m.data.dataset,
        "value_range": list(m.data.value_range),
        "preprocessing": m.data.preprocessing,
        "prior": m.latent.prior.kind,
        "graphs": {
            g: {"inputs": [t.model_dump() for t in s.inputs], "outputs": [t.model_dump() for t in s.outputs],
                "twins": None if not s.twins else {p: t.model_dump() for p, t in s.twins.items()}}
            for g, s in m.graphs.items()
        },
        "anomaly": None
        if m.anomaly is None
        else {
            "score": m.anomaly.score,
            "threshold": m.anomaly.threshold,
            "scale": m.anomaly.scale,
            "rule": m.anomaly.rule,
            "params": dict(m.anomaly.params),
            "map": None if m.anomaly.map is None else m.anomaly.map.model_dump(),
            "calibrated_fpr": m.anomaly.calibration is not None,
        },
        "spatial": None if m.spatial is None else m.spatial.model_dump(),
        "conditioning": None if m.labels is None else {
            "inputs": dict(m.labels.inputs),
            "class_priors": None if m.labels.class_priors is None
            else [p.kind for p in m.labels.class_priors],
        },
        "metrics": dict(m.metrics),
    }


@router.get("", response_model=ModelsResponse)
async def list_models(store: StoreDep) -> dict[str, Any]:
    """Every served model (latest version's summary) and the versions skipped at load."""
    return {"models": [summary(store, store.latest(n)) for n in store.names()], "problems": store.problems}


@router.get("/{name}", response_model=ModelDetailResponse)
async def get_model(name: str, store: StoreDep) -> dict[str, Any]:
    """The latest version of one model: manifest summary and training metrics."""
    return detail(store, store.get(name))


@router.get("/{name}/versions/{version}", response_model=ModelDetailResponse)
async def get_model_version(name: str, version: str, store: StoreDep) -> dict[str, Any]:
    """One version (a number or `latest`) of one model."""
    return detail(store, store.get(name, version))
