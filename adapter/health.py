"""Background health monitor: probes every upstream server at an interval and keeps its state.

vLLM refuses connections while it loads weights (minutes) and answers 503 when its engine died;
those are server states (`starting`, `unreachable`, `unhealthy`), not gateway failures. Each vLLM
replica and Ollama Vision has its own state; routing skips the replicas that are down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from adapter.errors import OllamaError, UpstreamUnavailable
from adapter.upstream import STREAM_ERRORS, Upstream

log = logging.getLogger("adapter.health")


@dataclass(slots=True)
class Health:
    """One server's state, as the last probe (or a request that could not connect) saw it."""

    status: str = "unknown"  # unknown | starting | healthy | unhealthy | unreachable
    since: float = 0.0  # wall clock of the last status change
    checked_at: float = 0.0
    detail: str = ""
    ever_healthy: bool = False

    @property
    def available(self) -> bool:
        """Worth sending a request to: healthy, or not probed yet."""
        return self.status in ("healthy", "unknown")

    def unhealthy_for(self) -> float:
        """Seconds the server has been in a non-healthy state (0 when healthy or unknown)."""
        return 0.0 if self.available else time.time() - self.since

    def set(self, status: str, detail: str = "", name: str = "") -> None:
        now = time.time()
        if self.status != status:
            if self.status != "unknown":
                log.warning("%s is now %s%s", name or "a server", status, f" ({detail})" if detail else "")
            self.status, self.since = status, now
        self.detail = detail
        self.checked_at = now
        if status == "healthy":
            self.ever_healthy = True

    def mark_unreachable(self, detail: str, name: str = "") -> None:
        """A request could not connect: do not wait for the next probe to know it."""
        if self.available:
            self.set("unreachable" if self.ever_healthy else "starting", detail, name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "since": self.since or None,
            "checked_at": self.checked_at or None,
            "detail": self.detail or None,
        }


# (server, probe path, its state)
Target = tuple[Upstream, str, Health]


async def probe(upstream: Upstream, path: str, health: Health, read_timeout: float) -> None:
    try:
        response = await upstream.send("GET", path, read_timeout=read_timeout, raise_for_status=False)
        try:
            await response.aread()  # read to the end, so the probe's connection is reused
        finally:
            response.close()
    except UpstreamUnavailable:
        # Refused: vLLM listens only once its weights are loaded, so before the first success this
        # is "starting", after it "unreachable".
        health.set("unreachable" if health.ever_healthy else "starting", "connection refused", upstream.name)
        return
    except OllamaError as exc:
        health.set("unhealthy", exc.message, upstream.name)
        return
    except STREAM_ERRORS as exc:
        health.set("unhealthy", f"{path}: {type(exc).__name__}", upstream.name)
        return
    if response.status_code < 400:
        health.set("healthy", "", upstream.name)
    else:
        health.set("unhealthy", f"{path} answered {response.status_code}", upstream.name)


class HealthMonitor:
    def __init__(self, targets: Callable[[], Iterable[Target]], interval: float) -> None:
        """targets: what to probe now (the catalog can change while the gateway runs)."""
        self.targets = targets
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def probe_all(self) -> None:
        timeout = max(self.interval, 2.0)
        await asyncio.gather(*(probe(upstream, path, health, timeout) for upstream, path, health in self.targets()))

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:
                log.exception("health probe failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
