"""Back-pressure: a limit on requests in flight per backend, with a bounded wait queue.

Beyond the queue the client gets Ollama's own `server busy` 503 (as with OLLAMA_MAX_QUEUE) and a
Retry-After, instead of piling onto an upstream that is already saturated.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from adapter.errors import OllamaError

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Busy(OllamaError):
    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(503, BUSY_MESSAGE, retry_after=str(retry_after))


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class _Unwatched:
    def set(self, value: float) -> None:
        pass


class Limiter:
    """A counting semaphore whose queue length is bounded and visible (for the gauges).

    The gauges are set on every change rather than read when scraped: with several worker
    processes, each one's values live in Prometheus' multiprocess files, not in a callback."""

    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        queue_timeout: float,
        gauges: tuple[Gauge, Gauge] | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout or None
        self._free = max_inflight
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._inflight_gauge, self._queued_gauge = gauges or (_Unwatched(), _Unwatched())
        self._idle = asyncio.Event()
        self._idle.set()

    def _report(self) -> None:
        inflight, queued = self.max_inflight - self._free, len(self._waiters)
        self._inflight_gauge.set(inflight)
        self._queued_gauge.set(queued)
        if inflight or queued:
            self._idle.clear()
        else:
            self._idle.set()

    async def idle(self) -> None:
        """Returns once nothing holds or waits for a slot (a replica the catalog dropped can close)."""
        await self._idle.wait()

    @property
    def inflight(self) -> int:
        return self.max_inflight - self._free

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._report()
            return
        if len(self._waiters) >= self.max_queue:
            raise Busy()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._report()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as we gave up: pass it on
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
                self._report()
            if isinstance(exc, TimeoutError):
                raise Busy() from None
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot straight to the next in line
                self._report()
                return
        self._free += 1
        self._report()
