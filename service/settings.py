"""Service settings from the environment (prefix ``LATENTSERVE_``), read once through `get_settings()`.

Tests build a `Settings(...)` and pass it to `create_app`, so nothing here is global beyond the cache.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Later issues (batching, auth, hot reload) read the fields defined here."""

    model_config = SettingsConfigDict(env_prefix="LATENTSERVE_", extra="ignore")

    store: Path = Field(default=Path("models_store"), description="root of the models store")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # The Open Inference Protocol over gRPC (service.grpc), on the same host, in the same process and event
    # loop as HTTP: Triton's port. A port that cannot be bound stops the server at startup, as Triton does.
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="gRPC (KServe V2) port; 0 = off")
    backend: Literal["onnx", "torchscript"] = Field(
        default="onnx", description="torchscript imports torch lazily, and only then"
    )
    # FP32 by default: it is what the export parity gate vouches for (1e-4 of torch) and what the anomaly
    # thresholds were calibrated on. A twin's answers differ by its recorded check, so serving them is the
    # operator's choice (or a request's: `precision`); a model without the twin serves FP32.
    precision: Literal["fp32", "int8", "fp16"] = Field(
        default="fp32", description="graphs' precision for requests that name none: fp32, or a twin's where "
        "the model has it")
    # One thread per session: our models are small and concurrency comes from the thread pool;
    # raise it for big conv models served one request at a time.
    intra_op_threads: int = Field(
        default=1, ge=0, description="onnxruntime intra-op threads (0 = its default)"
    )
    # On: under load it merges requests (fewer thread hand-offs and onnxruntime calls); idle it runs each at
    # once, the same as off (bench/results/serving.md).
    batching: bool = Field(default=True, description="merge concurrent requests to one graph (dim 0)")
    max_batch_size: int = Field(default=64, ge=1)
    # 0: a batch is whatever queued while the previous ones ran, so an idle server adds no wait and a busy
    # one still batches (bench/results/serving.md: 500 us cost latency and CPU at c=1 and gained nothing).
    max_queue_delay_us: int = Field(default=0, ge=0, description="how long a request may wait for a batch")
    queue_size: int = Field(default=1024, ge=1, description="pending requests per graph before 503")
    batch_instances: int | None = Field(
        default=None, ge=1, description="executions of one graph at once; None: one per core, 2 to 8"
    )
    # Handing work to a thread and back costs ~120 us of CPU (bench/serving.py), more than a small MLP's
    # inference; work predicted (from measured runs) under this runs on the event loop instead.
    inline_below_us: float = Field(
        default=100.0, ge=0, description="predicted compute below this runs on the event loop (0 = never)"
    )
    # The same when the request is alone in the server: the loop has nothing else to do while the thread runs,
    # so the hand-off is pure latency (bench/serving.py (e): a third of a 1 ms request at concurrency 1). A
    # request arriving meanwhile waits at most this long; with company, work goes to the pool and batches.
    inline_alone_below_us: float = Field(
        default=2000.0, ge=0, description="predicted compute below this runs on the event loop when the "
        "request is the only one in the server (0 = never)"
    )
    # Each graph runs once on a batch of its signature before it serves (Triton's model_warmup): onnxruntime
    # allocates and plans on its first run, which no client should wait for. Off only to measure that.
    warmup: bool = Field(default=True, description="run each graph once before it serves")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_items: int = Field(default=256, ge=1, description="images or latents per request")
    max_image_pixels: int = Field(default=4096 * 4096, ge=1, description="declared W*H above this is refused")
    # The pixels one request may make the server decode, summed over its images and judged from their headers
    # before any is decoded: 48 PNGs of 4096x4096 at 1 bit are 136 KB of body and 805 million pixels.
    max_request_pixels: int = Field(
        default=2 * 4096 * 4096, ge=1, description="decoded pixels per request, all images together"
    )
    # Request line and headers: bounded while they arrive, at the protocol (service/http/headers.py).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line + headers, bytes")
    max_header_fields: int = Field(default=128, ge=8, description="header fields per request")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection's start, or a request's first byte, to its last header"
    )
    request_timeout_s: float = Field(default=30.0, gt=0)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated; empty = no authentication on /v1"
    )
    admin_key: str | None = None
    reload_interval_s: float = Field(default=0.0, ge=0, description="store rescan period; 0 = off")
    # Graceful shutdown (service.shutdown): readiness drops at SIGTERM, new requests are still served for
    # the drain window (load balancers need a moment to notice), then in-flight ones finish; the process is
    # gone within the grace period. 8 s fits inside `docker stop`'s default 10 s before SIGKILL.
    shutdown_grace_s: float = Field(default=8.0, gt=0, description="SIGTERM to exit, at most")
    shutdown_drain_s: float = Field(default=1.0, ge=0, description="keep serving after SIGTERM for this long")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # One uvicorn access line per request costs ~47 us of CPU, a fifth of a small request's (bench/peers.py:
    # /v1 sample 195 -> 147 us at c=16 on one core). Triton and MLServer do not log each request by default,
    # and the nginx in front (deploy/nginx) already does; the Prometheus counters at /metrics always count.
    access_log: bool = Field(default=False, description="one log line per request (uvicorn's access log)")
    # FastAPI's native OpenTelemetry asks the global providers on every request whether anyone is listening:
    # ~6 us of a ~55 us GET even when nobody is (bench/serving.py's in-process breakdown). /metrics is the
    # service's own observability; turn this on to send spans and metrics to configured OTel providers.
    otel: bool = Field(default=False, description="FastAPI's OpenTelemetry spans, metrics and logs")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port are both {self.port}: gRPC needs a port of its own "
                             "(0 = off)")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
