"""Back-pressure: a limit on requests in flight per backend, with a bounded wait queue.

Beyond the queue the client gets Ollama's own `server busy` 503 (as with OLLAMA_MAX_QUEUE) and a
Retry-After, instead of piling onto an upstream that is already saturated.
"""

from __future__ import annotations

import asyncio
from collections import deque

from adapter.errors import OllamaError

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Busy(OllamaError):
    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(503, BUSY_MESSAGE, retry_after=str(retry_after))


class Limiter:
    """A counting semaphore whose queue length is bounded and visible (for the gauges)."""

    def __init__(self, max_inflight: int, max_queue: int, queue_timeout: float) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout or None
        self._free = max_inflight
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def inflight(self) -> int:
        return self.max_inflight - self._free

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Busy()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
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
            if isinstance(exc, TimeoutError):
                raise Busy() from None
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot straight to the next in line
                return
        self._free += 1
