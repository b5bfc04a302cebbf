"""Dynamic batching: concurrent requests to one graph are merged along dim 0, run once, and split back.

One `Batcher` per graph, shared by /v1 and /v2 (it sits behind `Runtime.infer`). It follows Triton's dynamic
batcher: a request waits at most `max_queue_delay_us` for a batch of up to `max_batch_size` rows to fill, and
batches run one at a time per graph in the runtime's thread pool (onnxruntime releases the GIL). While a batch
runs, new requests pile up and form the next one, so a delay of 0 still batches under load and adds no latency
when idle. The queue is bounded: a full queue raises `QueueFull` at once (the API answers 503 + Retry-After);
nothing waits forever.

Only requests with the same input names, dtypes and trailing shapes share a batch, so one malformed request
can never fail its neighbours' batch. A request bigger than `max_batch_size` runs alone, unsplit.
"""

from __future__ import annotations

import asyncio
import logging
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
    max_batch_size: int = 64  # rows per execution; a single larger request still runs (alone)
    max_queue_delay_us: int = 0  # how long the oldest request may wait for the batch to fill
    queue_size: int = 1024  # pending requests per graph before QueueFull


class QueueFull(Exception):
    """The batcher's queue is full; retry after `retry_after_s` seconds."""

    def __init__(self, graph: str, queue_size: int, retry_after_s: int = 1) -> None:
        super().__init__(f"the queue of {graph!r} is full ({queue_size} pending requests)")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    rows: int
    signature: object
    future: asyncio.Future[Feeds]
    enqueued: float


def _signature(feeds: Feeds) -> tuple[int, object]:
    """(rows, batching key). Inputs that do not share a dim 0 get a unique key: they run alone."""
    rows = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
    if len(rows) != 1 or -1 in rows:
        return 0, object()
    key = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))
    return rows.pop(), key


class Batcher:
    """Merges concurrent `infer` calls on one graph into batched executions of `run`."""

    def __init__(
        self, run: RunFn, config: BatchConfig, executor: Executor | None = None, *,
        model: str = "model", version: str = "1", stats: InferenceStats | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self._executor = executor
        self._model, self._version, self._stats = model, version, stats
        self._queue: deque[_Pending] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None
        # set when a request arrives while the drainer waits for the batch to fill
        self._arrival: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def infer(self, feeds: Feeds) -> Feeds:
        """Queue one request and wait for its own rows of the batched result."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests restart apps): forget the old one's state
            self._loop, self._queue, self._drainer, self._arrival = loop, deque(), None, None
        if len(self._queue) >= self.config.queue_size:
            raise QueueFull(self._model, self.config.queue_size)
        rows, key = _signature(feeds)
        item = _Pending(feeds, rows, key, loop.create_future(), time.perf_counter())
        self._queue.append(item)
        self._count_pending(+1)
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await item.future

    def _count_pending(self, delta: int) -> None:
        if self._stats is not None:
            self._stats.pending(self._model, self._version, delta)

    async def _drain(self) -> None:
        """Form and run batches until the queue is empty (then exit; the next request restarts it)."""
        try:
            while self._queue:
                await self._wait_for_fill()
                batch = self._take()
                if batch:
                    await self._execute(batch)
        except BaseException as exc:  # never leave a waiter hanging, whatever went wrong
            err = exc if isinstance(exc, Exception) else RuntimeError("the batcher was stopped")
            while self._queue:
                p = self._queue.popleft()
                self._count_pending(-1)
                if not p.future.done():
                    p.future.set_exception(err)
            raise

    def _rows_ready(self) -> int:
        key = self._queue[0].signature
        return sum(p.rows for p in self._queue if p.signature == key)

    async def _wait_for_fill(self) -> None:
        delay = self.config.max_queue_delay_us / 1e6
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].enqueued + delay
        while self._rows_ready() < self.config.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._arrival = loop.create_future()
            try:
                await asyncio.wait({self._arrival}, timeout=left)
            finally:
                self._arrival = None

    def _take(self) -> list[_Pending]:
        """Pop the oldest request and every later one that fits its batch (same key, row budget)."""
        first = self._queue.popleft()
        batch, rows, keep = [first], first.rows, deque[_Pending]()
        while self._queue:
            p = self._queue.popleft()
            if p.signature == first.signature and rows + p.rows <= self.config.max_batch_size:
                batch.append(p)
                rows += p.rows
            else:
                keep.append(p)
        self._queue = keep
        self._count_pending(-len(batch))
        now = time.perf_counter()
        live = [p for p in batch if not p.future.done()]  # a cancelled client needs no rows
        if self._stats is not None:
            for p in live:
                self._stats.queued(self._model, self._version, now - p.enqueued)
        return live

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            parts = await loop.run_in_executor(self._executor, self._run_batch, [p.feeds for p in batch])
        except BaseException as exc:  # every waiter of the batch gets the error; the drainer keeps going
            err = exc if isinstance(exc, Exception) else RuntimeError("the batcher was stopped")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            if err is not exc:
                raise
            return
        for p, out in zip(batch, parts, strict=True):
            if not p.future.done():
                p.future.set_result(out)

    def _run_batch(self, feeds: list[Feeds]) -> list[Feeds]:
        """Worker thread: concatenate, run once, split back into per-request outputs."""
        if len(feeds) == 1:
            merged = feeds[0]
        else:
            merged = {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        rows = [_signature(f)[0] for f in feeds]
        start = time.perf_counter()
        out = self._run(merged)
        if self._stats is not None:
            self._stats.execution(self._model, self._version, sum(rows), time.perf_counter() - start)
        if len(feeds) == 1:
            return [out]
        total = sum(rows)
        for name, arr in out.items():
            if arr.ndim == 0 or arr.shape[0] != total:
                raise RuntimeError(f"output {name!r} has no batch dimension of {total}; cannot split")
        bounds = np.cumsum([0, *rows])
        return [{n: a[bounds[i]:bounds[i + 1]] for n, a in out.items()} for i in range(len(feeds))]


def batch_config_from(settings: Any) -> BatchConfig:
    """The batcher knobs of a `Settings` object."""
    return BatchConfig(settings.max_batch_size, settings.max_queue_delay_us, settings.queue_size)


class _Session(Protocol):
    output_names: list[str]

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...


def session_runner(sess: _Session) -> RunFn:
    """A runtime graph session as a RunFn (outputs by name)."""
    names = sess.output_names

    def run(feeds: Feeds) -> Feeds:
        return dict(zip(names, sess.run(feeds), strict=True))

    return run


def run_timed(sess: _Session, feeds: Feeds, stats: InferenceStats, model: str, version: str) -> Feeds:
    """The unbatched path: one execution per request, recorded like a batch of its rows."""
    start = time.perf_counter()
    outs = session_runner(sess)(feeds)
    stats.execution(model, version, max(_signature(feeds)[0], 1), time.perf_counter() - start)
    return outs


class BatcherPool:
    """One `Batcher` per graph session, made on first use; a replaced session (reload) gets a fresh one."""

    def __init__(self, config: BatchConfig, stats: InferenceStats | None = None) -> None:
        self.config, self.stats = config, stats
        self._by_key: dict[object, tuple[_Session, Batcher]] = {}

    def get(self, key: object, sess: _Session, model: str, version: str) -> Batcher:
        entry = self._by_key.get(key)
        if entry is None or entry[0] is not sess:
            entry = (sess, Batcher(session_runner(sess), self.config, model=model, version=version,
                                   stats=self.stats))
            self._by_key[key] = entry
        return entry[1]
