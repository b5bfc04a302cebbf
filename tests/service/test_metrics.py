"""Metrics: Triton's exact family names with {model, version} labels, HTTP histograms by route template."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api.health import metrics_router as router
from service.http.timing import MetricsMiddleware
from service.metrics import Metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_triton_names_and_labels() -> None:
    m = Metrics()
    st = m.inference
    st.execution("vae-digits.decoder", "1", rows=6, compute_s=0.002)
    st.execution("vae-digits.decoder", "1", rows=2, compute_s=0.001)
    for _ in range(3):
        st.request("vae-digits.decoder", "1", 0.004)
        st.queued("vae-digits.decoder", "1", 0.0005)
    st.request("vae-digits.decoder", "1", 0.001, reason="REJECTED")
    st.pending_from("vae-digits.decoder", "1", lambda: 2)
    s = _samples(m.render().decode())
    lab = (("model", "vae-digits.decoder"), ("version", "1"))
    assert s[("nv_inference_count", lab)] == 8
    assert s[("nv_inference_exec_count", lab)] == 2
    assert s[("nv_inference_request_success", lab)] == 3
    assert s[("nv_inference_request_failure", (*lab[:1], ("reason", "REJECTED"), lab[1]))] == 1
    assert abs(s[("nv_inference_compute_infer_duration_us", lab)] - 3000) < 1e-6
    assert abs(s[("nv_inference_queue_duration_us", lab)] - 1500) < 1e-6
    assert abs(s[("nv_inference_request_duration_us", lab)] - 13000) < 1e-6
    assert s[("nv_inference_pending_request_count", lab)] == 2


def test_http_histogram_uses_route_templates_and_apps_do_not_collide() -> None:
    apps = []
    for _ in range(2):  # two apps in one process: separate registries, no "Duplicated timeseries"
        app = FastAPI()
        app.state.metrics = Metrics()
        app.include_router(router)

        @app.get("/items/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
        apps.append(app)
    with TestClient(apps[0]) as c:
        assert c.get("/items/1").status_code == 200
        assert c.get("/items/2").status_code == 200
        assert c.get("/items/x").status_code == 422
        assert c.get("/nope").status_code == 404
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = _samples(r.text)
    count = "latentserve_http_request_duration_seconds_count"
    assert s[(count, (("method", "GET"), ("route", "/items/{item_id}"), ("status", "200")))] == 2
    assert s[(count, (("method", "GET"), ("route", "/items/{item_id}"), ("status", "422")))] == 1
    assert s[(count, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert not any(k[0] == count and ("route", "/items/1") in k[1] for k in s)
    assert "/items" not in apps[1].state.metrics.render().decode()  # the other app saw no traffic


def test_in_flight_counts_requests_inside_the_app_and_returns_to_zero() -> None:
    """The batcher's `alone()` rule reads this counter: it must see concurrent requests and never leak."""
    import threading

    metrics = Metrics()
    seen: list[int] = []
    gate, leave = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    app = FastAPI()
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/wait")
    def wait() -> dict[str, int]:  # sync: each request on its own pool thread, so two overlap
        gate.wait()
        seen.append(metrics.in_flight)
        leave.wait()  # neither returns before both have looked: the first to finish cannot be missed
        return {}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as c:
        threads = [threading.Thread(target=c.get, args=("/wait",)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert c.get("/boom").status_code == 500
    assert seen == [2, 2]
    assert metrics.in_flight == 0
