"""The gateway's long-lived resources, created in the app's lifespan and shared by the routes."""

from __future__ import annotations

from dataclasses import dataclass

from adapter.catalog import Catalog
from adapter.config import Settings
from adapter.health import HealthMonitor
from adapter.limits import Limiter
from adapter.metrics import Metrics
from adapter.routing import ModelRegistry, Route
from adapter.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    vllm: Upstream
    vision: Upstream | None
    registry: ModelRegistry
    metrics: Metrics
    monitor: HealthMonitor

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics, catalog: Catalog | None = None) -> Gateway:
        api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        pool = settings.adapter_max_inflight + 16
        upstreams = {}
        for key, name, url, key_, read in (
            ("vllm", "vLLM", settings.vllm_base_url, api_key, settings.adapter_first_token_timeout),
            ("ollama", "Ollama Vision", settings.vision_ollama_url, None, settings.adapter_total_timeout),
        ):
            upstream = Upstream(
                name,
                url,
                api_key=key_,
                connect_timeout=settings.adapter_connect_timeout,
                read_timeout=read,
                max_connections=pool,
                limiter=Limiter(
                    settings.adapter_max_inflight, settings.adapter_max_queue, settings.adapter_queue_timeout
                ),
            )
            metrics.watch_limiter(key, upstream.limiter)
            upstreams[key] = upstream
        vllm, vision = upstreams["vllm"], upstreams["ollama"]
        registry = ModelRegistry(
            vllm, vision, aliases=settings.model_aliases, catalog=catalog, ttl=settings.adapter_models_ttl
        )
        monitor = HealthMonitor(
            {"vllm": (vllm, "/health"), "ollama": (vision, "/api/version")}, settings.adapter_health_interval
        )
        return cls(settings, vllm, vision, registry, metrics, monitor)

    async def aclose(self) -> None:
        await self.monitor.stop()
        await self.vllm.aclose()
        if self.vision is not None:
            await self.vision.aclose()

    def fallback_for(self, route: Route, *, connect_failed: bool = False) -> str | None:
        """The Ollama Vision model to serve this vLLM request instead, or None.

        Only in chat mode, only for models whose catalog entry names a fallback, and only when vLLM
        has been unhealthy for ADAPTER_FALLBACK_AFTER seconds (or this request could not connect).
        """
        if self.settings.adapter_mode != "chat" or route.backend != "vllm" or self.vision is None:
            return None
        fallback = route.entry.fallback if route.entry is not None else None
        if not fallback:
            return None
        if connect_failed or self.monitor.unhealthy_for("vllm") >= max(self.settings.adapter_fallback_after, 1e-9):
            return fallback
        return None
