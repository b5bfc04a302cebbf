"""A small typed client for the /v1 API that speaks numpy: for scripts and notebooks.

    from service.client import LatentClient
    with LatentClient("http://127.0.0.1:8000") as c:
        images = c.sample("vae-digits", n=16, seed=0)      # (16, 1, 8, 8) float32
        z = c.encode("vae-digits", images).mean             # (16, 8)

Errors come back as `ApiError` carrying the server's RFC 9457 problem (status, type, title, detail).
Needs httpx (`pip install latentserve[client]`), not the server's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx
import numpy as np

Version = int | Literal["latest"]


class ApiError(Exception):
    """An error answer from the service, with its problem details."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type", ""))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{status} {self.title}: {self.detail}")


@dataclass(frozen=True)
class Encoding:
    mean: np.ndarray  # (N, D)
    logvar: np.ndarray | None  # (N, D) for VAEs


@dataclass(frozen=True)
class Reconstruction:
    images: np.ndarray  # (N, C, H, W)
    mse: np.ndarray  # (N,)


@dataclass(frozen=True)
class Denoising:
    images: np.ndarray  # (N, C, H, W)
    noisy: np.ndarray | None  # the corrupted inputs when noise was requested


@dataclass(frozen=True)
class AnomalyResult:
    score: str
    raw: np.ndarray  # (N,)
    normalised: np.ndarray  # (N,); 0.5 is the threshold
    threshold: float
    is_anomaly: np.ndarray  # (N,) bool
    heatmaps: np.ndarray | None  # (N, C, H, W)


def _f32(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _payload(images: np.ndarray | list[Any] | str) -> Any:
    return images.tolist() if isinstance(images, np.ndarray) else images


class LatentClient:
    """Synchronous client. Pass `http` to reuse an httpx.Client (e.g. a Starlette TestClient)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owned = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.http.headers.update(headers)

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> LatentClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------
    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"title": r.reason_phrase, "detail": r.text[:500]}
            raise ApiError(r.status_code, problem if isinstance(problem, dict) else {"detail": str(problem)})
        return r

    def _post(self, model: str, op: str, body: dict[str, Any], version: Version) -> dict[str, Any]:
        path = (
            f"/v1/models/{model}/{op}"
            if version == "latest"
            else f"/v1/models/{model}/versions/{version}/{op}"
        )
        return self._check(self.http.post(path, json=body)).json()  # type: ignore[no-any-return]

    # --- registry -------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """Every served model's summary."""
        return self._check(self.http.get("/v1/models")).json()["models"]  # type: ignore[no-any-return]

    def model(self, name: str, version: Version = "latest") -> dict[str, Any]:
        """One model version's manifest summary and metrics."""
        return self._check(self.http.get(f"/v1/models/{name}/versions/{version}")).json()  # type: ignore[no-any-return]

    # --- operations -----------------------------------------------------------------------------
    def encode(self, model: str, images: np.ndarray | list[Any], *, version: Version = "latest") -> Encoding:
        r = self._post(model, "encode", {"images": _payload(images)}, version)
        return Encoding(_f32(r["mean"]), None if r["logvar"] is None else _f32(r["logvar"]))

    def decode(self, model: str, latents: np.ndarray, *, version: Version = "latest") -> np.ndarray:
        return _f32(self._post(model, "decode", {"latents": np.asarray(latents).tolist()}, version)["images"])

    def sample(
        self,
        model: str,
        n: int = 16,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        version: Version = "latest",
    ) -> np.ndarray:
        body = {"n": n, "seed": seed, "temperature": temperature}
        return _f32(self._post(model, "sample", body, version)["images"])

    def interpolate(
        self,
        model: str,
        start: np.ndarray,
        end: np.ndarray,
        *,
        steps: int = 8,
        method: Literal["linear", "slerp"] = "linear",
        version: Version = "latest",
    ) -> np.ndarray:
        """start/end: latents (D,) or single images ((H, W) or (1, C, H, W))."""
        body = {"start": _payload(start), "end": _payload(end), "steps": steps, "method": method}
        return _f32(self._post(model, "interpolate", body, version)["images"])

    def reconstruct(self, model: str, images: np.ndarray, *, version: Version = "latest") -> Reconstruction:
        r = self._post(model, "reconstruct", {"images": _payload(images)}, version)
        return Reconstruction(_f32(r["images"]), _f32(r["mse"]))

    def denoise(
        self,
        model: str,
        images: np.ndarray,
        *,
        noise: dict[str, Any] | None = None,
        version: Version = "latest",
    ) -> Denoising:
        """noise: {"kind": "gaussian" | "salt-and-pepper" | "masking", "level": float, "seed": int}."""
        r = self._post(model, "denoise", {"images": _payload(images), "noise": noise}, version)
        return Denoising(_f32(r["images"]), None if r["noisy"] is None else _f32(r["noisy"]))

    def anomaly_score(
        self,
        model: str,
        images: np.ndarray,
        *,
        heatmap: bool = False,
        version: Version = "latest",
    ) -> AnomalyResult:
        r = self._post(model, "anomaly-score", {"images": _payload(images), "heatmap": heatmap}, version)
        return AnomalyResult(
            score=r["score"],
            raw=np.asarray(r["raw"]),
            normalised=np.asarray(r["normalised"]),
            threshold=float(r["threshold"]),
            is_anomaly=np.asarray(r["is_anomaly"], dtype=bool),
            heatmaps=None if r["heatmaps"] is None else _f32(r["heatmaps"]),
        )
