"""Background health monitor: probes each backend at an interval and keeps its state.

vLLM refuses connections while it loads weights (minutes) and answers 503 when its engine died;
those are backend states (`starting`, `unreachable`, `unhealthy`), not gateway failures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from adapter.errors import OllamaError, UpstreamUnavailable
from adapter.upstream import STREAM_ERRORS, Upstream

log = logging.getLogger("adapter.health")


@dataclass(slots=True)
class BackendState:
    status: str = "unknown"  # unknown | starting | healthy | unhealthy | unreachable
    since: float = 0.0  # wall clock of the last status change
    checked_at: float = 0.0
    detail: str = ""
    ever_healthy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "since": self.since or None,
            "checked_at": self.checked_at or None,
            "detail": self.detail or None,
        }


class HealthMonitor:
    def __init__(self, backends: dict[str, tuple[Upstream, str]], interval: float) -> None:
        """backends: key -> (upstream, probe path)."""
        self.backends = backends
        self.interval = interval
        self.states: dict[str, BackendState] = {key: BackendState() for key in backends}
        self._task: asyncio.Task[None] | None = None

    def _set(self, key: str, status: str, detail: str = "") -> None:
        state = self.states[key]
        now = time.time()
        if state.status != status:
            if state.status != "unknown":
                log.warning("%s is now %s%s", self.backends[key][0].name, status, f" ({detail})" if detail else "")
            state.status, state.since = status, now
        state.detail = detail
        state.checked_at = now
        if status == "healthy":
            state.ever_healthy = True

    async def probe(self, key: str) -> None:
        upstream, path = self.backends[key]
        try:
            response = await upstream.send("GET", path, read_timeout=max(self.interval, 2.0), raise_for_status=False)
            try:
                await response.aread()  # read to the end, so the probe's connection is reused
            finally:
                response.close()
        except UpstreamUnavailable:
            # Refused: vLLM listens only once its weights are loaded, so before the first success
            # this is "starting", after it "unreachable".
            self._set(key, "starting" if not self.states[key].ever_healthy else "unreachable", "connection refused")
            return
        except OllamaError as exc:
            self._set(key, "unhealthy", exc.message)
            return
        except STREAM_ERRORS as exc:
            self._set(key, "unhealthy", f"{path}: {type(exc).__name__}")
            return
        if response.status_code < 400:
            self._set(key, "healthy")
        else:
            self._set(key, "unhealthy", f"{path} answered {response.status_code}")

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(key) for key in self.backends))

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

    def mark_unreachable(self, key: str, detail: str) -> None:
        """A request could not connect: do not wait for the next probe to know it."""
        state = self.states[key]
        if state.status == "healthy" or state.status == "unknown":
            self._set(key, "unreachable" if state.ever_healthy else "starting", detail)

    def unhealthy_for(self, key: str) -> float:
        """Seconds the backend has been in a non-healthy state (0 when healthy)."""
        state = self.states[key]
        if state.status in ("healthy", "unknown"):
            return 0.0
        return time.time() - state.since
