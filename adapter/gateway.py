"""The gateway's long-lived resources, created in the app's lifespan and shared by the routes.

The catalog's part (backends, their replicas, the router) is a Topology, replaced whole when the
catalog is reloaded (SIGHUP). A replica that is in both the old and the new catalog keeps its pooled
client and its limiter, so nothing in flight notices; a request reads the topology once, so a stream
finishes on the backend it started on; a replica the new catalog drops is closed once its last
request is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapter.balancing import Backend, Replica
from adapter.catalog import DEFAULT_BACKEND, OLLAMA_BACKEND, Catalog, CatalogError, load_catalog
from adapter.config import Settings
from adapter.exchange import Timeouts
from adapter.health import HealthMonitor, Target
from adapter.limits import Limiter
from adapter.metrics import Metrics
from adapter.routing import Router
from adapter.upstream import Upstream

log = logging.getLogger("adapter.gateway")

# A pooled client is shared by every backend that names the same server the same way.
ReplicaKey = tuple[str, str, str | None, int]  # (backend, url, api key, in-flight limit)


@dataclass
class Topology:
    catalog: Catalog
    backends: dict[str, Backend]  # vLLM backends, VLLM_BASE_URL's ("vllm") first
    router: Router


class Gateway:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        catalog: Catalog | None = None,
        *,
        workers: int = 1,
        force_canary: bool = False,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.workers = max(workers, 1)
        self.force_canary = force_canary
        total = settings.adapter_total_timeout or None
        self.timeouts = Timeouts(settings.adapter_first_token_timeout or None, total)
        # Ollama Vision loads a model on first use: only the total bounds it.
        self.vision_timeouts = Timeouts(None, total)
        self._replicas: dict[ReplicaKey, Replica] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.vision = self._replica(OLLAMA_BACKEND, "Ollama Vision", settings.vision_ollama_url, None, None)
        self.topology = self.build(catalog or Catalog())
        self.monitor = HealthMonitor(self.health_targets, settings.adapter_health_interval)

    @property
    def router(self) -> Router:
        return self.topology.router

    def _replica(self, backend: str, name: str, url: str, api_key: str | None, max_inflight: int | None) -> Replica:
        settings = self.settings
        inflight = max((max_inflight or settings.adapter_max_inflight) // self.workers, 1)
        key = (backend, url, api_key, inflight)
        replica = self._replicas.get(key)
        if replica is None:
            limiter = Limiter(
                inflight,
                settings.adapter_max_queue // self.workers,
                settings.adapter_queue_timeout,
                self.metrics.limiter_gauges(backend, url),
            )
            upstream = Upstream(
                name,
                url,
                api_key=api_key,
                connect_timeout=settings.adapter_connect_timeout,
                read_timeout=settings.adapter_first_token_timeout if backend != OLLAMA_BACKEND else None,
                max_connections=inflight + 16,
                limiter=limiter,
            )
            replica = self._replicas[key] = Replica(backend, upstream)
        return replica

    def build(self, catalog: Catalog) -> Topology:
        """The backends and router a catalog describes, reusing the replicas that stay."""
        settings = self.settings
        api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        backends = {
            DEFAULT_BACKEND: Backend(
                DEFAULT_BACKEND,
                [self._replica(DEFAULT_BACKEND, "vLLM", url, api_key, None) for url in settings.vllm_base_urls],
                discovered=True,
            )
        }
        for name, spec in catalog.backends.items():
            replicas = [
                # Without a key of its own, a backend gets VLLM_API_KEY, as every vLLM of one deployment.
                self._replica(name, f"vLLM ({name})", url, spec.api_key or api_key, spec.max_inflight)
                for url in spec.replicas
            ]
            backends[name] = Backend(name, replicas, discovered=False)
        router = Router(
            backends,
            self.vision.upstream,
            aliases=settings.model_aliases,
            catalog=catalog,
            ttl=settings.adapter_models_ttl,
            mode=settings.adapter_mode,
            fallback_after=settings.adapter_fallback_after,
            force_canary=self.force_canary,
        )
        return Topology(catalog, backends, router)

    def health_targets(self) -> list[Target]:
        targets: list[Target] = [(self.vision.upstream, "/api/version", self.vision.health)]
        for backend in self.topology.backends.values():
            targets += [(r.upstream, "/health", r.health) for r in backend.replicas]
        return targets

    def install(self, catalog: Catalog) -> None:
        """Serve this catalog from now on; close the replicas it no longer names once they are idle."""
        old = self.topology
        self.topology = self.build(catalog)
        kept = {id(r) for b in self.topology.backends.values() for r in b.replicas}
        for backend in old.backends.values():
            for replica in backend.replicas:
                if id(replica) not in kept:
                    key = next(k for k, v in self._replicas.items() if v is replica)
                    del self._replicas[key]
                    self.spawn(self._retire(replica))

    async def _retire(self, replica: Replica) -> None:
        await replica.upstream.limiter.idle()
        await replica.upstream.aclose()
        self.metrics.forget_replica(replica.backend, replica.url)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run in the background, holding a reference until done (the loop keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, path: Path) -> bool:
        """Reload the catalog file (SIGHUP). An invalid file is refused, with the entry and field
        logged, and the catalog in use keeps serving."""
        try:
            catalog = load_catalog(path)
        except CatalogError as exc:
            log.error("catalog reload refused, still serving the previous one: %s", exc)
            return False
        self.install(catalog)
        log.info(
            "catalog reloaded from %s: %d backends, %d models",
            path,
            len(self.topology.backends),
            len(catalog.models),
        )
        return True

    async def aclose(self) -> None:
        await self.monitor.stop()
        for replica in self._replicas.values():
            await replica.upstream.aclose()
