"""The dynamic batcher: every request gets exactly its own rows back, the queue is bounded, nothing hangs."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.batching import BatchConfig, Batcher, QueueFull, _signature
from service.metrics import InferenceStats


def _mlp_onnx(in_dim: int = 8, out_dim: int = 16, seed: int = 0) -> bytes:
    """y = tanh(x W + b), z = sum(x): two outputs with a dynamic batch dimension."""
    rng = np.random.default_rng(seed)
    w = helper.make_tensor("W", TensorProto.FLOAT, [in_dim, out_dim],
                           rng.normal(size=(in_dim, out_dim)).ravel())
    b = helper.make_tensor("B", TensorProto.FLOAT, [out_dim], rng.normal(size=out_dim))
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["hb"]),
         helper.make_node("Tanh", ["hb"], ["y"]), helper.make_node("ReduceSum", ["x", "axes"], ["z"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_dim]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(_mlp_onnx(), opts, providers=["CPUExecutionProvider"])


def _runner(sess: ort.InferenceSession):
    names = [o.name for o in sess.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(names, feeds), strict=True))

    return run


@pytest.mark.parametrize("delay_us", [0, 2000])
def test_200_concurrent_requests_get_their_own_rows(session: ort.InferenceSession, delay_us: int) -> None:
    stats = InferenceStats()
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1 + i % 4, 8)).astype(np.float32) for i in range(200)]  # distinct, 1-4 rows
    expected = [_runner(session)({"x": x}) for x in inputs]

    async def main() -> list[dict[str, np.ndarray]]:
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(_runner(session), BatchConfig(16, delay_us, 512), pool, model="m.g", stats=stats)
            return await asyncio.gather(*(b.infer({"x": x}) for x in inputs))

    got = asyncio.run(main())
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for n in e:
            assert g[n].shape == e[n].shape
            np.testing.assert_allclose(g[n], e[n], rtol=1e-5, atol=1e-6)
    rows = sum(len(x) for x in inputs)
    assert stats.value("nv_inference_count", "m.g", "1") == rows
    execs = stats.value("nv_inference_exec_count", "m.g", "1")
    assert rows / 16 <= execs < 200  # requests really were merged, never above max_batch_size
    assert stats.value("nv_inference_pending_request_count", "m.g", "1") == 0


def test_mismatched_shapes_never_share_a_batch(session: ort.InferenceSession) -> None:
    """A malformed request fails alone; its neighbours in the queue still succeed."""
    good = np.ones((2, 8), np.float32)
    bad = np.ones((2, 5), np.float32)

    async def main() -> list[object]:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(_runner(session), BatchConfig(64, 5000, 64), pool)
            return await asyncio.gather(b.infer({"x": good}), b.infer({"x": bad}), b.infer({"x": good}),
                                        return_exceptions=True)

    r = asyncio.run(main())
    assert isinstance(r[0], dict) and isinstance(r[2], dict)
    assert isinstance(r[1], Exception)
    np.testing.assert_allclose(r[0]["y"], _runner(session)({"x": good})["y"], rtol=1e-5)


def test_big_request_runs_alone_unsplit(session: ort.InferenceSession) -> None:
    x = np.random.default_rng(2).normal(size=(100, 8)).astype(np.float32)

    async def main() -> dict[str, np.ndarray]:
        b = Batcher(_runner(session), BatchConfig(8, 0, 4))
        return await b.infer({"x": x})

    out = asyncio.run(main())
    np.testing.assert_allclose(out["y"], _runner(session)({"x": x})["y"], rtol=1e-5)


def test_full_queue_rejects_at_once_and_nothing_hangs() -> None:
    gate = threading.Event()
    started = threading.Event()

    def slow(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        gate.wait(10)
        return {"y": feeds["x"] * 2}

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(slow, BatchConfig(1, 0, 2, instances=1), pool, model="m.g")
            first = asyncio.ensure_future(b.infer({"x": np.ones((1, 2), np.float32)}))
            while not started.is_set():  # the first request is executing, the queue is empty again
                await asyncio.sleep(0.001)
            queued = [asyncio.ensure_future(b.infer({"x": np.full((1, 2), i, np.float32)})) for i in range(2)]
            await asyncio.sleep(0.01)
            assert b.pending == 2
            with pytest.raises(QueueFull) as err:
                await asyncio.wait_for(b.infer({"x": np.ones((1, 2), np.float32)}), 1.0)
            assert err.value.retry_after_s >= 1
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(first, *queued), 5.0)
            assert [float(r["y"][0, 0]) for r in results] == [2.0, 0.0, 2.0]

    asyncio.run(main())


def test_failing_run_reaches_every_waiter() -> None:
    def broken(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("boom")

    async def main() -> list[object]:
        b = Batcher(broken, BatchConfig(8, 1000, 16))
        return await asyncio.wait_for(asyncio.gather(
            *(b.infer({"x": np.ones((1, 2), np.float32)}) for _ in range(5)), return_exceptions=True), 5.0)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_cancelled_waiter_does_not_break_the_batch(session: ort.InferenceSession) -> None:
    async def main() -> None:
        b = Batcher(_runner(session), BatchConfig(8, 20_000, 16))
        x = np.ones((1, 8), np.float32)
        doomed = asyncio.ensure_future(b.infer({"x": x}))
        kept = asyncio.ensure_future(b.infer({"x": x * 2}))
        await asyncio.sleep(0)
        doomed.cancel()
        out = await asyncio.wait_for(kept, 5.0)
        np.testing.assert_allclose(out["y"], _runner(session)({"x": x * 2})["y"], rtol=1e-5)

    asyncio.run(main())


def test_instances_run_batches_side_by_side() -> None:
    """Two instances: two executions overlap (each waits for the other at a barrier)."""
    barrier = threading.Barrier(2, timeout=5)

    def meet(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        barrier.wait()
        return {"y": feeds["x"]}

    async def main() -> list[dict[str, np.ndarray]]:
        with ThreadPoolExecutor(4) as pool:
            b = Batcher(meet, BatchConfig(1, 0, 8, instances=2), pool)
            both = asyncio.gather(b.infer({"x": np.zeros((1, 1), np.float32)}),
                                  b.infer({"x": np.ones((1, 1), np.float32)}))
            return await asyncio.wait_for(both, 10)

    a, b = asyncio.run(main())
    assert float(a["y"][0, 0]) == 0.0 and float(b["y"][0, 0]) == 1.0


def test_tiny_work_runs_inline_after_it_was_measured(session: ort.InferenceSession) -> None:
    threads: list[int] = []
    run = _runner(session)

    def spy(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return run(feeds)

    async def main(limit_us: float) -> None:
        b = Batcher(spy, BatchConfig(8, 0, 16, inline_below_us=limit_us))
        x = np.ones((1, 8), np.float32)
        for _ in range(3):
            np.testing.assert_allclose((await b.infer({"x": x}))["y"], run({"x": x})["y"], rtol=1e-6)

    loop_thread = threading.get_ident()
    asyncio.run(main(1e9))  # everything is "tiny": only the first, unmeasured, run leaves the loop
    assert threads[0] != loop_thread and threads[1:] == [loop_thread, loop_thread]
    threads.clear()
    asyncio.run(main(0.0))  # inline off: always the pool
    assert loop_thread not in threads


def test_a_batching_window_is_honoured_even_for_tiny_work(session: ort.InferenceSession) -> None:
    """Inline work skips the queue only when no max_queue_delay is configured: with a window, concurrent
    tiny requests still wait for each other and share one execution."""
    sizes: list[int] = []
    run = _runner(session)

    def spy(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(feeds["x"]))
        return run(feeds)

    async def main(delay_us: int, alone: bool) -> None:
        b = Batcher(spy, BatchConfig(8, delay_us, 16, inline_below_us=1e9), alone=lambda: alone)
        await b.infer({"x": np.ones((1, 8), np.float32)})  # measured once: from now on everything is tiny
        xs = [np.full((1, 8), i, np.float32) for i in range(4)]
        outs = await asyncio.gather(*(b.infer({"x": x}) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_allclose(out["y"], run({"x": x})["y"], rtol=1e-6)

    asyncio.run(main(20_000, alone=True))
    assert sizes == [1, 4]  # the four waited 20 ms for each other, alone or not
    sizes.clear()
    asyncio.run(main(0, alone=True))
    assert sizes == [1, 1, 1, 1, 1]  # no window and each request alone: each ran at once, on the loop


def test_tiny_work_with_company_is_batched_on_the_loop(session: ort.InferenceSession) -> None:
    """No window, requests not alone: tiny ones that arrive in the same loop turn share one execution, run
    on the event loop (no thread), one turn later; batching off runs each at once."""
    calls: list[tuple[int, int]] = []
    run = _runner(session)

    def spy(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append((len(feeds["x"]), threading.get_ident()))
        return run(feeds)

    async def main(max_batch: int) -> None:
        b = Batcher(spy, BatchConfig(max_batch, 0, 16, inline_below_us=1e9), alone=lambda: False)
        await b.infer({"x": np.ones((1, 8), np.float32)})  # measured once (in the pool)
        xs = [np.full((i % 2 + 1, 8), i, np.float32) for i in range(5)]  # 1 or 2 rows each: 7 rows
        outs = await asyncio.gather(*(b.infer({"x": x}) for x in xs))
        for x, out in zip(xs, outs, strict=True):  # each gets exactly its own rows back
            np.testing.assert_allclose(out["y"], run({"x": x})["y"], rtol=1e-6)

    loop_thread = threading.get_ident()
    asyncio.run(main(8))
    assert [n for n, _ in calls] == [1, 7] and calls[1][1] == loop_thread
    calls.clear()
    asyncio.run(main(4))  # max_batch_size 4: 1+2+1 = 4 rows, then 2+1
    assert [n for n, _ in calls] == [1, 4, 3] and {t for _, t in calls[1:]} == {loop_thread}
    calls.clear()
    asyncio.run(main(1))  # batching off: nothing to merge, each runs at once
    assert [n for n, _ in calls] == [1, 1, 2, 1, 2, 1]


def test_larger_work_runs_inline_only_when_the_request_is_alone(session: ort.InferenceSession) -> None:
    """Work above inline_below_us but under inline_alone_below_us skips the pool only while `alone()`
    holds."""
    threads: list[int] = []
    run = _runner(session)
    alone = [True]

    def spy(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return run(feeds)

    async def main() -> None:
        cfg = BatchConfig(8, 0, 16, inline_below_us=1e-3, inline_alone_below_us=1e9)
        b = Batcher(spy, cfg, alone=lambda: alone[0])
        x = np.ones((1, 8), np.float32)
        for flag in (True, True, False, True, False):  # the first run is unmeasured: the pool
            alone[0] = flag
            np.testing.assert_allclose((await b.infer({"x": x}))["y"], run({"x": x})["y"], rtol=1e-6)

    loop_thread = threading.get_ident()
    asyncio.run(main())
    on_loop = [t == loop_thread for t in threads]
    assert on_loop == [False, True, False, True, False]


def test_settings_map_to_batch_configs() -> None:
    from service.batching import batch_config_from
    from service.settings import Settings

    off = batch_config_from(Settings(batching=False, queue_size=7, batch_instances=3))
    assert (off.max_batch_size, off.max_queue_delay_us, off.queue_size, off.instances) == (1, 0, 7, 3)
    on = batch_config_from(Settings(batching=True, max_batch_size=32, max_queue_delay_us=250))
    assert (on.max_batch_size, on.max_queue_delay_us) == (32, 250) and on.instances >= 2
    knobs = batch_config_from(Settings(inline_below_us=50, inline_alone_below_us=700))
    assert (knobs.inline_below_us, knobs.inline_alone_below_us) == (50, 700)


def test_onnx_helper_graph_is_valid() -> None:
    onnx.checker.check_model(onnx.load_from_string(_mlp_onnx()))


def test_tiny_work_does_not_wait_for_busy_instances() -> None:
    """The one instance is held by a big execution in the pool; a tiny request (run on the loop) is answered
    meanwhile, and a batch of tiny work stops at the rows still predicted tiny."""
    gate = threading.Event()
    sizes: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(feeds["x"])
        sizes.append(rows)
        if rows >= 50:
            gate.wait(10)
        time.sleep(0.001 * rows)  # 1 ms a row: 1 to 4 rows are "tiny" under 5 ms
        return {"y": feeds["x"] + 1}

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(run, BatchConfig(64, 0, 64, instances=1, inline_below_us=5000), pool,
                        alone=lambda: False)
            await b.infer({"x": np.zeros((1, 2), np.float32)})  # measured: ~1 ms a row
            big = asyncio.ensure_future(b.infer({"x": np.zeros((50, 2), np.float32)}))
            while sizes[-1] != 50:
                await asyncio.sleep(0.001)
            small = await asyncio.wait_for(b.infer({"x": np.full((1, 2), 7, np.float32)}), 5.0)
            assert float(small["y"][0, 0]) == 8.0 and not big.done()
            many = await asyncio.wait_for(asyncio.gather(
                *(b.infer({"x": np.full((1, 2), i, np.float32)}) for i in range(10))), 5.0)
            assert [float(m["y"][0, 0]) for m in many] == [i + 1.0 for i in range(10)]
            gate.set()
            assert (await asyncio.wait_for(big, 10.0))["y"].shape == (50, 2)

    asyncio.run(main())
    tiny_batches = sizes[3:-1] if sizes[-1] == 50 else sizes[3:]
    assert sizes[:3] == [1, 50, 1]
    assert sum(tiny_batches) == 10 and max(tiny_batches) <= 5  # batched, but only as far as stays tiny


def test_the_compute_estimate_is_the_least_of_the_last_32_executions() -> None:
    """The running minimum kept incrementally equals the brute-force one, also when the least value leaves
    the window."""
    b = Batcher(lambda feeds: feeds, BatchConfig())
    rng = np.random.default_rng(5)
    seen: list[float] = []
    for i in range(300):
        took = float(rng.uniform(1, 10)) if i % 50 else 0.5  # a low value every 50, which later ages out
        rows = int(rng.integers(1, 4))
        b._measured(rows, rows * 8, took)  # noqa: SLF001  (8 input elements a row)
        seen.append(took / (rows * 8))
        assert b._s_per_unit == min(seen[-32:])  # noqa: SLF001


def test_the_estimate_scales_with_the_input_not_the_rows() -> None:
    """A fully convolutional graph's cost grows with each image's pixels: a batch of one large image must not
    look tiny because a batch of one small image was (it would then run on the event loop and stall it)."""
    config = BatchConfig(inline_below_us=100.0, inline_alone_below_us=2000.0)
    b = Batcher(lambda feeds: feeds, config, s_per_unit=1e-9, alone=lambda: True)  # 1 ns per pixel
    assert b._inline_now(64 * 64)  # noqa: SLF001  a small crop: 4 us, on the loop
    assert not b._inline_now(4096 * 4096)  # noqa: SLF001  a 16-megapixel photo: 17 ms, to the pool
    assert _signature({"x": np.zeros((2, 3, 10, 20), np.float32)})[::2] == (2, 2 * 3 * 10 * 20)
