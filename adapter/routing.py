"""Where a request goes: model name (+ images, + backend health) -> Route. The only place that decides.

Names resolve through the catalog, MODEL_ALIASES, then discovery (vLLM's /v1/models, Ollama Vision's
/api/tags). Discovery results are cached for ADAPTER_MODELS_TTL seconds, so a chat request costs no
upstream listing call; a miss on a stale cache refreshes once (a model vLLM started serving a moment
ago). Requests with images go to Ollama Vision unless the vLLM model can see; in chat mode a model
whose vLLM is down answers through its catalog fallback on Ollama Vision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from adapter.catalog import Catalog, ModelEntry, normalize_name
from adapter.errors import ModelNotFound, OllamaError
from adapter.health import HealthMonitor
from adapter.translate.models import ListedName, default_capabilities, ollama_name
from adapter.upstream import Upstream
from vision.proxy import models_of

log = logging.getLogger("adapter.routing")

Backend = Literal["vllm", "ollama"]


@dataclass(frozen=True, slots=True)
class Route:
    backend: Backend
    upstream_model: str  # the id the backend knows (for Ollama Vision: the name as the client wrote it)
    entry: ModelEntry | None = None  # catalog entry, when the catalog names the model
    context_length: int | None = None
    fallback: bool = False  # an Ollama Vision model answers in place of an unavailable vLLM one

    @property
    def capabilities(self) -> tuple[str, ...]:
        if self.entry is not None and self.entry.capabilities is not None:
            caps = self.entry.capabilities
        else:
            caps = tuple(default_capabilities(self.upstream_model)) if self.backend == "vllm" else ()
        if self.entry is not None and self.entry.fim and "insert" not in caps:
            caps = (*caps, "insert")
        return caps

    @property
    def request_defaults(self) -> dict[str, Any]:
        return dict(self.entry.request_defaults) if self.entry is not None else {}

    @property
    def strict_tools(self) -> bool:
        return self.entry is not None and self.entry.strict_tools


@dataclass(slots=True)
class Listing:
    """One backend's discovered models and when we asked."""

    models: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float = 0.0  # monotonic; 0 = never
    ok: bool = False
    error: str = ""
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)  # lookup key -> model

    @classmethod
    def of(cls, models: list[dict[str, Any]], fields: tuple[str, ...], fetched_at: float) -> Listing:
        by_key: dict[str, dict[str, Any]] = {}
        for model in models:
            for f in fields:
                value = model.get(f)
                if isinstance(value, str):
                    by_key.setdefault(normalize_name(value), model)
        return cls(models, fetched_at, True, "", by_key)


class Router:
    def __init__(
        self,
        vllm: Upstream,
        vision: Upstream,
        monitor: HealthMonitor,
        *,
        aliases: dict[str, str] | None = None,
        catalog: Catalog | None = None,
        ttl: float = 10.0,
        mode: str = "chat",
        fallback_after: float = 10.0,
    ) -> None:
        self.vllm = vllm
        self.vision = vision
        self.monitor = monitor
        self.aliases = {normalize_name(k): v for k, v in (aliases or {}).items()}
        self.alias_names = dict(aliases or {})
        self.catalog = catalog or Catalog()
        self.ttl = ttl
        self.mode = mode
        self.fallback_after = max(fallback_after, 1e-9)
        self._entries: dict[str, ModelEntry] = {}
        for entry in self.catalog.models:
            for name in (entry.name, *entry.aliases):
                self._entries[normalize_name(name)] = entry
        self._listings: dict[Backend, Listing] = {"vllm": Listing(), "ollama": Listing()}
        self._locks: dict[Backend, asyncio.Lock] = {"vllm": asyncio.Lock(), "ollama": asyncio.Lock()}
        self._first_seen: dict[str, float] = {}
        self._warned_clashes: set[str] = set()

    # ---- discovery -------------------------------------------------------------------------

    async def listing(self, backend: Backend, *, max_age: float | None = None) -> Listing:
        """The backend's model list, refreshed when older than `max_age` (default: the TTL)."""
        listing = self._listings[backend]
        max_age = self.ttl if max_age is None else max_age
        if listing.fetched_at and time.monotonic() - listing.fetched_at < max_age:
            return listing
        async with self._locks[backend]:  # one refresh at a time; waiters reuse its result
            listing = self._listings[backend]
            if listing.fetched_at and time.monotonic() - listing.fetched_at < max_age:
                return listing
            self._listings[backend] = listing = await self._fetch(backend, listing)
        return listing

    async def _fetch(self, backend: Backend, previous: Listing) -> Listing:
        upstream = self.vllm if backend == "vllm" else self.vision
        try:
            if backend == "vllm":
                data = await upstream.get_json("/v1/models")
                cards = data.get("data") if isinstance(data, dict) else None
                models = [m for m in cards or () if isinstance(m, dict) and isinstance(m.get("id"), str)]
            else:
                models = models_of(await upstream.get_json("/api/tags"))
        except OllamaError as exc:
            log.warning("could not list models of %s: %s", upstream.name, exc.message)
            # Keep what we knew (stale beats nothing), but remember the failure and retry soon.
            stale = time.monotonic() - max(self.ttl - 1.0, 0)
            return Listing(previous.models, stale, False, exc.message, previous.by_key)
        now = time.time()
        for m in models:
            self._first_seen.setdefault(f"{backend}:{m.get('id') or ollama_name(m)}", now)
        return Listing.of(models, ("id",) if backend == "vllm" else ("model", "name"), time.monotonic())

    def vllm_names(self, cards: list[dict[str, Any]]) -> list[ListedName]:
        """Every name that reaches vLLM (catalog entries and their aliases, MODEL_ALIASES, then
        discovered ids), once each, first definition winning."""
        context = {card["id"]: card.get("max_model_len") for card in cards}
        out: dict[str, ListedName] = {}

        def add(name: str, upstream_id: str, entry: ModelEntry | None) -> None:
            key = normalize_name(name)
            if key not in out:
                route = Route("vllm", upstream_id, entry)
                length = (entry.context_length if entry else None) or context.get(upstream_id)
                family = entry.family if entry else None
                out[key] = ListedName(key, name, upstream_id, family, length, route.capabilities)

        for entry in self.catalog.models:
            if entry.backend == "vllm":
                for name in (entry.name, *entry.aliases):
                    add(name, entry.upstream_id, entry)
        for alias, target in self.alias_names.items():
            add(alias, target, self._entries.get(normalize_name(target)))
        if self.catalog.discover:
            for upstream_id in sorted(context):
                add(upstream_id, upstream_id, None)
        return list(out.values())

    def ollama_entries(self) -> list[tuple[tuple[str, ...], str]]:
        """The catalog's Ollama Vision models: (names, upstream id)."""
        return [((e.name, *e.aliases), e.upstream_id) for e in self.catalog.models if e.backend == "ollama"]

    def first_seen(self, backend: Backend, upstream_id: str) -> float:
        return self._first_seen.setdefault(f"{backend}:{upstream_id}", time.time())

    # ---- resolution ------------------------------------------------------------------------

    async def resolve(self, name: str) -> Route:
        """Model name as a client sends it -> where it lives. Raises ModelNotFound, or a 502 when
        vLLM could not be asked and nothing is known."""
        key = normalize_name(name)
        entry = self._entries.get(key)
        if entry is not None:
            return Route(entry.backend, entry.upstream_id, entry, entry.context_length)
        if key in self.aliases:
            target = self.aliases[key]
            target_entry = self._entries.get(normalize_name(target))
            if target_entry is not None:
                return Route(target_entry.backend, target_entry.upstream_id, target_entry, target_entry.context_length)
            return await self._discovered(target, name) or Route("vllm", target)
        if not self.catalog.discover:
            raise ModelNotFound(name)
        route = await self._discovered(name, name)
        if route is None:
            raise ModelNotFound(name)
        return route

    async def _discovered(self, wanted: str, original: str) -> Route | None:
        key = normalize_name(wanted)
        for max_age in (None, 1.0):  # cached first; on a miss, refresh if older than a second
            vllm = await self.listing("vllm", max_age=max_age)
            card = vllm.by_key.get(key)
            if card is not None:
                # A vLLM model never waits for Ollama Vision: the clash check uses what is cached.
                if key in self._listings["ollama"].by_key:
                    self._warn_clash(key, original)
                return Route("vllm", card["id"], None, card.get("max_model_len"))
            if key in (await self.listing("ollama", max_age=max_age)).by_key:
                return Route("ollama", wanted)  # the name as given: Ollama Vision resolves it itself
            if not vllm.ok and max_age is not None:
                # vLLM could not be asked: it may well serve this model, so say it is down rather
                # than "not found" (which makes the `ollama` CLI try to pull).
                raise OllamaError(502, vllm.error or f"{self.vllm.name} is unavailable")
        return None

    def _warn_clash(self, key: str, name: str) -> None:
        if key not in self._warned_clashes:
            self._warned_clashes.add(key)
            log.warning(
                "model %r is served by both vLLM and Ollama Vision; vLLM answers it "
                "(name the model in ADAPTER_MODELS_FILE to choose)",
                name,
            )

    async def route(self, name: str, *, images: bool = False) -> Route:
        """Where a generation request goes: images go to Ollama Vision unless the vLLM model can
        see; a vLLM model down for ADAPTER_FALLBACK_AFTER answers through its fallback (chat mode)."""
        route = await self.resolve(name)
        if route.backend != "vllm":
            return route
        if images and "vision" not in route.capabilities:
            return Route("ollama", name)
        if self.monitor.unhealthy_for("vllm") >= self.fallback_after:
            return self.fallback(route) or route
        return route

    def fallback(self, route: Route) -> Route | None:
        """The fallback for a vLLM route whose backend cannot serve it now, if it has one: only in
        chat mode, and only for models whose catalog entry names one."""
        if self.mode != "chat" or route.backend != "vllm" or route.entry is None or not route.entry.fallback:
            return None
        return replace(Route("ollama", route.entry.fallback), fallback=True)

    async def context_length_of(self, route: Route) -> int | None:
        if route.context_length:
            return route.context_length
        if route.backend != "vllm":
            return None
        card = (await self.listing("vllm")).by_key.get(normalize_name(route.upstream_model))
        return card.get("max_model_len") if card else None
