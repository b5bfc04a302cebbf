"""Prometheus metrics: Triton-named inference statistics and HTTP latency histograms, one registry per app.

Inference families carry Triton's exact names and `{model, version}` labels, where `model` is the V2 name
`<model>.<graph>`, so dashboards built for Triton work unchanged:

    nv_inference_request_success            requests that succeeded
    nv_inference_request_failure{reason}    requests that failed: REJECTED (queue full), BACKEND (onnxruntime
                                            error), OTHER (bad input)
    nv_inference_count                      inferences (batch rows) performed
    nv_inference_exec_count                 model executions (batches); mean batch = count / exec_count
    nv_inference_request_duration_us        cumulative end-to-end time in the runtime
    nv_inference_queue_duration_us          cumulative time requests waited in the batcher queue
    nv_inference_compute_infer_duration_us  cumulative onnxruntime time, per execution
    nv_inference_pending_request_count      requests waiting in the queue now (gauge)

prometheus-client would append `_total` to a counter's name, so the cumulative families are exposed untyped
with Triton's names (PromQL's rate() works on them all the same). HTTP latency is a real prometheus-client
histogram: `latentserve_http_request_duration_seconds{method, route, status}`, with the route template (not
the raw path) as label, so cardinality stays bounded; service.http.timing observes it, and GET /metrics
(service.api.health) renders the registry.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FailureReason = str  # "REJECTED" | "BACKEND" | "OTHER" (Triton's reason label values)

_COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (one per batch row)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
}
_FAILURE = "nv_inference_request_failure"
_PENDING = "nv_inference_pending_request_count"
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class InferenceStats(Collector):
    """Thread-safe cumulative statistics per (model, version), collected in Triton's names.

    Plain dicts under one lock: the hot path adds a few floats, far cheaper than labelled prometheus
    children, and the batcher's worker threads can record without touching the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], dict[str, float]] = defaultdict(
            lambda: dict.fromkeys(_COUNTERS, 0.0))
        self._failures: dict[tuple[str, str, str], float] = defaultdict(float)
        # The pending gauge is read from its source (a batcher's queue length) when collected, so the hot path
        # keeps no count. Sources are replaced when a graph gets a new batcher (reload).
        self._pending: dict[tuple[str, str], Callable[[], int]] = {}

    def request(
        self, model: str, version: str, duration_s: float, reason: FailureReason | None = None,
    ) -> None:
        """One request finished: success when `reason` is None."""
        with self._lock:
            v = self._values[(model, version)]
            v["nv_inference_request_duration_us"] += duration_s * 1e6
            if reason is None:
                v["nv_inference_request_success"] += 1
            else:
                self._failures[(model, version, reason)] += 1

    def execution(self, model: str, version: str, rows: int, compute_s: float) -> None:
        """One model execution of `rows` batch rows."""
        with self._lock:
            v = self._values[(model, version)]
            v["nv_inference_exec_count"] += 1
            v["nv_inference_count"] += rows
            v["nv_inference_compute_infer_duration_us"] += compute_s * 1e6

    def queued(self, model: str, version: str, queue_s: float) -> None:
        """Requests left the queue after `queue_s` seconds in all (one call per batch)."""
        with self._lock:
            self._values[(model, version)]["nv_inference_queue_duration_us"] += queue_s * 1e6

    def pending_from(self, model: str, version: str, source: Callable[[], int]) -> None:
        """Where the pending gauge of (model, version) is read: `source()`, when collected."""
        with self._lock:
            self._pending[(model, version)] = source

    def value(self, name: str, model: str, version: str, reason: str | None = None) -> float:
        """Current value of one series (for tests and the benchmark)."""
        with self._lock:
            if name == _FAILURE:
                return self._failures.get((model, version, reason or "OTHER"), 0.0)
            if name == _PENDING:
                source = self._pending.get((model, version))
                return float(source() if source is not None else 0)
            return self._values.get((model, version), {}).get(name, 0.0)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values = {k: dict(v) for k, v in self._values.items()}
            failures = dict(self._failures)
            pending = {k: source() for k, source in self._pending.items()}
        for name, doc in _COUNTERS.items():
            m = Metric(name, doc, "unknown")
            for (model, version), v in sorted(values.items()):
                m.add_sample(name, {"model": model, "version": version}, v[name])
            yield m
        m = Metric(_FAILURE, "Number of failed inference requests, all batch sizes", "unknown")
        for (model, version, reason), n in sorted(failures.items()):
            m.add_sample(_FAILURE, {"model": model, "version": version, "reason": reason}, n)
        yield m
        g = GaugeMetricFamily(_PENDING, "Instantaneous number of pending requests awaiting execution",
                              labels=["model", "version"])
        for (model, version), n in sorted(pending.items()):
            g.add_metric([model, version], n)
        yield g


class Metrics:
    """Everything /metrics exposes for one app, in its own registry (tests build many apps)."""

    def __init__(self) -> None:
        self.in_flight = 0  # HTTP requests inside the app now (the batcher asks whether one is alone)
        self.registry = CollectorRegistry(auto_describe=False)
        self.inference = InferenceStats()
        self.registry.register(self.inference)
        self.http = Histogram(
            "latentserve_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route", "status"], registry=self.registry, buckets=HTTP_BUCKETS,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
