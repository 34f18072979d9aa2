"""The gateway's long-lived resources, created in the app's lifespan and shared by the routes."""

from __future__ import annotations

from dataclasses import dataclass

from adapter.catalog import Catalog
from adapter.config import Settings
from adapter.exchange import Timeouts
from adapter.health import HealthMonitor
from adapter.limits import Limiter
from adapter.metrics import Metrics
from adapter.routing import Router
from adapter.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    vllm: Upstream
    vision: Upstream
    router: Router
    metrics: Metrics
    monitor: HealthMonitor
    timeouts: Timeouts  # vLLM: a stream must keep moving, and the whole request has a bound
    vision_timeouts: Timeouts  # Ollama Vision loads a model on first use: only the total bounds it

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics, catalog: Catalog | None = None) -> Gateway:
        api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        pool = settings.adapter_max_inflight + 16
        total = settings.adapter_total_timeout or None

        def limiter() -> Limiter:
            return Limiter(settings.adapter_max_inflight, settings.adapter_max_queue, settings.adapter_queue_timeout)

        vllm = Upstream(
            "vLLM",
            settings.vllm_base_url,
            api_key=api_key,
            connect_timeout=settings.adapter_connect_timeout,
            read_timeout=settings.adapter_first_token_timeout,
            max_connections=pool,
            limiter=limiter(),
        )
        vision = Upstream(
            "Ollama Vision",
            settings.vision_ollama_url,
            connect_timeout=settings.adapter_connect_timeout,
            read_timeout=total,
            max_connections=pool,
            limiter=limiter(),
        )
        metrics.watch_limiter("vllm", vllm.limiter)
        metrics.watch_limiter("ollama", vision.limiter)
        monitor = HealthMonitor(
            {"vllm": (vllm, "/health"), "ollama": (vision, "/api/version")}, settings.adapter_health_interval
        )
        router = Router(
            vllm,
            vision,
            monitor,
            aliases=settings.model_aliases,
            catalog=catalog,
            ttl=settings.adapter_models_ttl,
            mode=settings.adapter_mode,
            fallback_after=settings.adapter_fallback_after,
        )
        timeouts = Timeouts(settings.adapter_first_token_timeout or None, total)
        return cls(settings, vllm, vision, router, metrics, monitor, timeouts, Timeouts(None, total))

    async def aclose(self) -> None:
        await self.monitor.stop()
        await self.vllm.aclose()
        await self.vision.aclose()
