"""One deadline per request, from the moment its headers are in to the first byte of its answer.

It has to cover the body upload and its parsing as well as the handler, and it must answer the client even
when a handler is stuck in a worker thread (a thread cannot be killed; the client is answered anyway):

- a body still uploading at the deadline (service.http.body has not finished reading it) gets 408: the client
  is slow;
- a handler that has not started its response gets 504, sent from a side task: we are slow;
- a response already streaming is left to finish.

The header phase before it has a deadline of its own, at the protocol (service.http.headers).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestTimeout, Timeout
from service.http import problems
from service.http.body import BODY_KEY

log = logging.getLogger(__name__)


class _Timer:
    """The one timer of a request. No task is created unless it fires, so a request within its deadline
    pays for one timer handle."""

    __slots__ = ("answer", "expired", "handle", "responding", "scope", "send", "task", "timeout_s")

    def __init__(self, scope: Scope, send: Send, timeout_s: float) -> None:
        self.scope, self.send, self.timeout_s = scope, send, timeout_s
        self.responding = False
        self.expired = False
        self.answer: asyncio.Task[None] | None = None
        self.task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self.handle = loop.call_at(loop.time() + timeout_s, self._fire)

    def _fire(self) -> None:
        if self.responding:
            return
        self.expired = True
        path = problems.route_path(self.scope)
        if BODY_KEY in self.scope:  # the body is in: the app is late
            log.warning("request to %s timed out after %g s", path, self.timeout_s)
            err = Timeout(f"the request did not complete within {self.timeout_s:g} s")
            self.answer = asyncio.get_running_loop().create_task(problems.send(self.scope, self.send, err))
        else:
            log.info("request body to %s did not arrive within %g s", path, self.timeout_s)
        if self.task is not None:
            self.task.cancel()

    def owns(self, exc: BaseException) -> bool:
        """True when `exc` is this deadline's cancellation (then it is consumed, not propagated)."""
        if not (self.expired and isinstance(exc, asyncio.CancelledError)):
            return False
        if self.task is not None:
            self.task.uncancel()
        return True


class Deadline:
    """Bounds the time to the first response byte of every HTTP request (`timeout_s`; 0 = no deadline)."""

    def __init__(self, app: ASGIApp, timeout_s: float = 0.0) -> None:
        self.app = app
        self.timeout_s = float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        timer = _Timer(scope, send, self.timeout_s)

        async def guarded_send(message: Message) -> None:
            if timer.expired:  # the client has its 504; a late handler writes nowhere
                return
            if message["type"] == "http.response.start":
                timer.responding = True  # set before awaiting: the timer must not race the start
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except asyncio.CancelledError as exc:
            if not timer.owns(exc):
                raise
            if timer.answer is None:  # expired while the body was still arriving
                err = RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s")
                await problems.send(scope, send, err, close=True)
        except Exception as exc:
            if not timer.expired:
                raise
            log.warning("timed-out request to %s later failed: %r", problems.route_path(scope), exc)
        finally:
            timer.handle.cancel()
        if timer.answer is not None:
            await timer.answer
