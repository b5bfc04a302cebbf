"""Dynamic batching: concurrent requests to one graph are merged along dim 0, run once, and split back.

One `Batcher` per graph, shared by /v1 and /v2 (it sits behind `Runtime.infer`). It follows Triton's dynamic
batcher: a request waits at most `max_queue_delay_us` for a batch of up to `max_batch_size` rows to fill, and
up to `instances` batches of one graph run at once in the thread pool (onnxruntime releases the GIL). While
they run, new requests pile up and form the next batch, so a delay of 0 still batches under load and adds no
latency when idle. Batching off is the same queue with batches of one row-set.

The queue is bounded: a full queue raises `QueueFull` at once (the API answers 503 + Retry-After); nothing
waits forever, and an execution that fails fails only the requests of its batch.

Only requests with the same input names, dtypes and trailing shapes share a batch, so one malformed request
can never fail its neighbours' batch. A request bigger than `max_batch_size` runs alone, unsplit.

Small work runs on the event loop instead of the pool, judged by its compute time predicted from the least
time per input element of recent executions:
- a request alone in the server (`alone()`) with work under `inline_alone_below_us` runs at once: the loop
  would only wait for the thread, so the hand-off is pure latency;
- tiny work (under `inline_below_us`) with company queues, and the queue is run on the loop one turn later
  (`_flush`): the requests that arrived together share one execution, as many rows as stay tiny, and no
  thread hand-off (which costs more than the inference) is paid. It needs no pool instance, so it never waits
  for one.
The first execution of a graph always goes to the pool, so nothing unmeasured ever blocks the loop, and a
configured `max_queue_delay_us` is always honoured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.metrics import InferenceStats

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]



@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 64  # rows per execution (1 = no merging); a single larger request still runs alone
    max_queue_delay_us: int = 0  # how long the oldest request may wait for the batch to fill
    queue_size: int = 1024  # pending requests per graph before QueueFull
    instances: int = 2  # executions of one graph at once (Triton's instance count), each on a pool thread
    inline_below_us: float = 0.0  # run on the event loop when the predicted compute is below this (0 = never)
    # ... and below this when the request is alone in the server (nothing else for the loop to do meanwhile)
    inline_alone_below_us: float = 0.0


class QueueFull(Exception):
    """The batcher's queue is full; retry after `retry_after_s` seconds."""

    def __init__(self, graph: str, queue_size: int, retry_after_s: int = 1) -> None:
        super().__init__(f"the queue of {graph!r} is full ({queue_size} pending requests)")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    rows: int
    work: int  # input elements: what the compute estimate scales with
    signature: object
    future: asyncio.Future[Feeds]
    enqueued: float


def _signature(feeds: Feeds) -> tuple[int, object, int]:
    """(rows, batching key, work). Inputs that do not share a dim 0 get a unique key: they run alone. The work
    is the input's element count: a fully convolutional graph's cost grows with each image's pixels, not with
    the rows alone."""
    if len(feeds) == 1:  # the usual case, without the sets and sorting below
        (name, a), = feeds.items()
        if not a.ndim:
            return 0, object(), a.size
        return a.shape[0], ((name, a.dtype.str, a.shape[1:]),), a.size
    work = sum(a.size for a in feeds.values())
    rows = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
    if len(rows) != 1 or -1 in rows:
        return 0, object(), work
    key = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))
    return rows.pop(), key, work


class Batcher:
    """Merges concurrent `infer` calls on one graph into batched executions of `run`."""

    def __init__(
        self, run: RunFn, config: BatchConfig, executor: Executor | None = None, *,
        model: str = "model", version: str = "1", stats: InferenceStats | None = None,
        alone: Callable[[], bool] | None = None, s_per_unit: float | None = None,
    ) -> None:
        """`s_per_unit`: compute seconds per input element already measured (the warm-up's), so the first
        request can run on the event loop when that is where it belongs."""
        self._run = run
        self._alone = alone or (lambda: False)  # True when this request is the only one in the server
        self.config = config
        self._executor = executor
        self._model, self._version, self._stats = model, version, stats
        if stats is not None:
            stats.pending_from(model, version, lambda: len(self._queue))
        self._reset(None)
        # Compute time per input element: the minimum of recent executions, since wall time measured on a busy
        # host also counts waits for a core or the GIL, which says nothing about the work itself.
        self._recent: deque[float] = deque([s_per_unit] if s_per_unit is not None else (), maxlen=32)
        self._s_per_unit: float | None = s_per_unit

    def _reset(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0  # executions running in the pool
        self._filling = False  # a task is waiting for a partial batch to fill
        self._flush_soon = False  # a loop callback will run the queued tiny work (see `_dispatch`)
        self._flushing = False  # ... and is running it now
        self._arrival: asyncio.Future[None] | None = None  # wakes that task when a request arrives

    @property
    def model(self) -> str:
        """The metrics label of the graph (V2 name)."""
        return self._model

    @property
    def version(self) -> str:
        return self._version

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def infer(self, feeds: Feeds) -> Feeds:
        """Queue one request and wait for its own rows of the batched result."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests restart apps): forget the old one's state
            self._reset(loop)
        if len(self._queue) >= self.config.queue_size:
            raise QueueFull(self._model, self.config.queue_size)
        rows, key, work = _signature(feeds)
        if not self._queue and not self.config.max_queue_delay_us and self._inline_now(work):
            # Nothing waiting, no batching window to honour, and the work is tiny (or the request is alone):
            # run it now, on the loop, without queue or future (and no queue time to record).
            return self._run_one(feeds, rows, work)
        item = _Pending(feeds, rows, work, key, loop.create_future(), time.perf_counter())
        self._queue.append(item)
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        self._dispatch()
        return await item.future

    # --- scheduling (event loop only) -------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start executions while an instance is free; a partial batch may first wait to fill."""
        while self._queue and not self._filling:
            if self._should_wait():
                self._filling = True
                assert self._loop is not None
                self._loop.create_task(self._fill())
                return
            tiny = self._tiny_rows()
            if tiny:
                # Tiny work runs on the loop (it needs no pool instance), one turn later: the requests that
                # arrived with this one (their tasks are already scheduled, ahead of this callback) join its
                # batch, and one onnxruntime call serves them all.
                if not self._flushing:
                    if not self._flush_soon:
                        self._flush_soon = True
                        assert self._loop is not None
                        self._loop.call_soon(self._flush)
                    return
            elif self._in_flight >= self.config.instances:
                return
            self._start(self._take(tiny or self.config.max_batch_size))

    def _tiny_rows(self) -> int:
        """How many rows a batch may hold and still be predicted tiny (under inline_below_us); 0 when even
        the head request is not."""
        if self._s_per_unit is None or not self.config.inline_below_us:
            return 0
        head = self._queue[0]
        per_row = head.work / max(head.rows, 1)
        fit = int(self.config.inline_below_us / 1e6 / max(self._s_per_unit * per_row, 1e-12))
        if fit < max(head.rows, 1):
            return 0
        return max(1, min(fit, self.config.max_batch_size))

    def _flush(self) -> None:
        self._flush_soon, self._flushing = False, True
        try:
            self._dispatch()
        finally:
            self._flushing = False

    def _should_wait(self) -> bool:
        delay = self.config.max_queue_delay_us / 1e6
        return delay > 0 and self._rows_ready() < self.config.max_batch_size and \
            time.perf_counter() < self._queue[0].enqueued + delay

    def _rows_ready(self) -> int:
        key = self._queue[0].signature
        return sum(p.rows for p in self._queue if p.signature == key)

    async def _fill(self) -> None:
        """Wait until the head batch is full or its oldest request has waited max_queue_delay, then run it."""
        try:
            delay = self.config.max_queue_delay_us / 1e6
            while self._queue and self._rows_ready() < self.config.max_batch_size:
                left = self._queue[0].enqueued + delay - time.perf_counter()
                if left <= 0:
                    break
                assert self._loop is not None
                self._arrival = self._loop.create_future()
                try:
                    await asyncio.wait({self._arrival}, timeout=left)
                finally:
                    self._arrival = None
            if self._queue:
                self._start(self._take(self.config.max_batch_size))
        except BaseException as exc:  # never leave a waiter hanging, whatever went wrong
            self._fail(list(self._queue), exc)
            self._queue.clear()
            raise
        finally:
            self._filling = False
        self._dispatch()

    def _take(self, max_rows: int) -> list[_Pending]:
        """Pop the oldest request and every later one that fits its batch (same key, up to max_rows rows)."""
        first = self._queue.popleft()
        batch, rows, keep = [first], first.rows, deque[_Pending]()
        while self._queue:
            p = self._queue.popleft()
            if p.signature == first.signature and rows + p.rows <= max_rows:
                batch.append(p)
                rows += p.rows
            else:
                keep.append(p)
        self._queue = keep
        now = time.perf_counter()
        live = [p for p in batch if not p.future.done()]  # a cancelled client needs no rows
        if self._stats is not None and live:
            self._stats.queued(self._model, self._version, sum(now - p.enqueued for p in live))
        return live

    def _start(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        if self._predicted_below(sum(p.work for p in batch), self.config.inline_below_us):
            # Tiny work: a hand-off to a thread costs more than the inference itself.
            try:
                parts = self._run_batch(batch)
            except Exception as exc:
                self._fail(batch, exc)
                return
            self._deliver(batch, parts)
            return
        self._in_flight += 1
        assert self._loop is not None
        self._loop.create_task(self._execute(batch))

    def _predicted_below(self, work: int, limit_us: float) -> bool:
        """True when `work` input elements are predicted (from measured executions) to compute in under
        `limit_us`."""
        return self._s_per_unit is not None and self._s_per_unit * max(work, 1) * 1e6 < limit_us

    def _inline_now(self, work: int) -> bool:
        """Run at once, on the loop, without queue or future: work predicted under inline_alone_below_us when
        the request is alone (the loop would only wait for a thread, whose hand-off is then pure latency: at
        concurrency 1, a third of a 1 ms request in bench/serving.py), and tiny work when there is no batching
        to be had (batching off). Tiny work with company queues and is flushed on the loop, batched."""
        tiny = self._predicted_below(work, self.config.inline_below_us)
        if tiny and self.config.max_batch_size == 1:
            return True
        return (tiny or self._predicted_below(work, self.config.inline_alone_below_us)) and self._alone()

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            parts = await loop.run_in_executor(self._executor, self._run_batch, batch)
        except BaseException as exc:  # every waiter of the batch gets the error; the scheduler keeps going
            self._fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._deliver(batch, parts)
        finally:
            self._in_flight -= 1
            self._dispatch()

    @staticmethod
    def _deliver(batch: list[_Pending], parts: list[Feeds]) -> None:
        for p, out in zip(batch, parts, strict=True):
            if not p.future.done():
                p.future.set_result(out)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        err = exc if isinstance(exc, Exception) else RuntimeError("the batcher was stopped")
        for p in batch:
            if not p.future.done():
                p.future.set_exception(err)

    def _run_one(self, feeds: Feeds, rows: int, work: int) -> Feeds:
        """Run one request's feeds as they are (the inline path, and a batch of one)."""
        start = time.perf_counter()
        out = self._run(feeds)
        self._measured(rows, work, time.perf_counter() - start)
        return out

    def _measured(self, rows: int, work: int, took: float) -> None:
        """Record an execution: the compute estimate (seconds per input element, least of the last 32) and
        the metrics."""
        self._recent.append(took / max(work, 1))
        self._s_per_unit = min(self._recent)
        if self._stats is not None:
            self._stats.execution(self._model, self._version, rows, took)

    def _run_batch(self, batch: list[_Pending]) -> list[Feeds]:
        """Worker thread: concatenate, run once, split back into per-request outputs."""
        if len(batch) == 1:
            return [self._run_one(batch[0].feeds, batch[0].rows, batch[0].work)]
        feeds, rows = [p.feeds for p in batch], [p.rows for p in batch]
        merged = {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        start = time.perf_counter()
        out = self._run(merged)
        total = sum(rows)
        self._measured(total, sum(p.work for p in batch), time.perf_counter() - start)
        for name, arr in out.items():
            if arr.ndim == 0 or arr.shape[0] != total:
                raise RuntimeError(f"output {name!r} has no batch dimension of {total}; cannot split")
        bounds = np.cumsum([0, *rows])
        return [{n: a[bounds[i]:bounds[i + 1]] for n, a in out.items()} for i in range(len(feeds))]


def default_instances() -> int:
    """Concurrent executions per graph: one per core (sessions use one intra-op thread), 2 to 8."""
    return max(2, min(8, os.cpu_count() or 2))


def batch_config_from(settings: Any) -> BatchConfig:
    """The batcher knobs of a `Settings` object. Batching off is the same queue with batches of one."""
    instances = settings.batch_instances or default_instances()
    inline, alone = settings.inline_below_us, settings.inline_alone_below_us
    if not settings.batching:
        return BatchConfig(1, 0, settings.queue_size, instances, inline, alone)
    return BatchConfig(settings.max_batch_size, settings.max_queue_delay_us, settings.queue_size, instances,
                       inline, alone)


class _Session(Protocol):
    output_names: list[str]

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...


def session_runner(sess: _Session) -> RunFn:
    """A runtime graph session as a RunFn (outputs by name)."""
    names = sess.output_names

    def run(feeds: Feeds) -> Feeds:
        return dict(zip(names, sess.run(feeds), strict=True))

    return run


class BatcherPool:
    """One `Batcher` per graph session, made on first use; a replaced session (reload) gets a fresh one.
    `labels(key)` gives the new batcher's metrics labels (model, version)."""

    def __init__(self, config: BatchConfig, stats: InferenceStats | None = None,
                 alone: Callable[[], bool] | None = None,
                 labels: Callable[[Any], tuple[str, str]] = lambda key: (str(key), "1")) -> None:
        self.config, self.stats, self.alone, self.labels = config, stats, alone, labels
        self._by_key: dict[object, tuple[_Session, Batcher]] = {}

    def get(self, key: object, sess: _Session, s_per_unit: float | None = None) -> Batcher:
        entry = self._by_key.get(key)
        if entry is None or entry[0] is not sess:
            model, version = self.labels(key)
            entry = (sess, Batcher(session_runner(sess), self.config, model=model, version=version,
                                   stats=self.stats, alone=self.alone, s_per_unit=s_per_unit))
            self._by_key[key] = entry
        return entry[1]
