"""The gateway's long-lived resources, created in the app's lifespan and shared by the routes."""

from __future__ import annotations

from dataclasses import dataclass

from adapter.catalog import Catalog
from adapter.config import Settings
from adapter.routing import ModelRegistry
from adapter.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    vllm: Upstream
    vision: Upstream | None
    registry: ModelRegistry

    @classmethod
    def create(cls, settings: Settings, catalog: Catalog | None = None) -> Gateway:
        api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        pool = settings.adapter_max_inflight + settings.adapter_max_queue + 16
        vllm = Upstream(
            "vLLM",
            settings.vllm_base_url,
            api_key=api_key,
            connect_timeout=settings.adapter_connect_timeout,
            read_timeout=settings.adapter_first_token_timeout,
            max_connections=pool,
        )
        vision = Upstream(
            "Ollama Vision",
            settings.vision_ollama_url,
            connect_timeout=settings.adapter_connect_timeout,
            read_timeout=settings.adapter_total_timeout,
            max_connections=pool,
        )
        registry = ModelRegistry(
            vllm, vision, aliases=settings.model_aliases, catalog=catalog, ttl=settings.adapter_models_ttl
        )
        return cls(settings, vllm, vision, registry)

    async def aclose(self) -> None:
        await self.vllm.aclose()
        if self.vision is not None:
            await self.vision.aclose()
