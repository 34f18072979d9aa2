"""Which backend serves a model: catalog + discovery -> (backend, upstream model id).

Discovery results are cached for ADAPTER_MODELS_TTL seconds, so a chat request costs no upstream
listing call; a miss on a stale cache refreshes once (a model vLLM started serving a moment ago).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from adapter.catalog import Catalog, ModelEntry, normalize_name
from adapter.errors import ModelNotFound, OllamaError
from adapter.translate.models import default_capabilities
from adapter.upstream import Upstream

log = logging.getLogger("adapter.routing")

Backend = Literal["vllm", "ollama"]


@dataclass(frozen=True, slots=True)
class Route:
    backend: Backend
    upstream_model: str  # the id the backend knows
    entry: ModelEntry | None = None  # catalog entry, when the catalog names the model
    context_length: int | None = None

    @property
    def capabilities(self) -> tuple[str, ...]:
        if self.entry is not None and self.entry.capabilities is not None:
            return self.entry.capabilities
        return tuple(default_capabilities(self.upstream_model)) if self.backend == "vllm" else ()

    @property
    def request_defaults(self) -> dict[str, Any]:
        return dict(self.entry.request_defaults) if self.entry is not None else {}

    @property
    def strict_tools(self) -> bool:
        return self.entry is not None and self.entry.strict_tools


@dataclass(frozen=True, slots=True)
class ListedName:
    """A name a client can use for a vLLM model, as /api/tags, /api/ps and /v1/models list it."""

    key: str  # normalize_name(name)
    name: str
    upstream_id: str
    family: str | None
    context_length: int | None


@dataclass(slots=True)
class _Listing:
    """One backend's discovered models and when we asked."""

    models: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float = 0.0  # monotonic; 0 = never
    ok: bool = False
    error: str = ""


def local_rfc3339(epoch: float) -> str:
    """Ollama's modified_at: local time with offset."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat()


class ModelRegistry:
    def __init__(
        self,
        vllm: Upstream,
        vision: Upstream | None,
        *,
        aliases: dict[str, str] | None = None,
        catalog: Catalog | None = None,
        ttl: float = 10.0,
    ) -> None:
        self.vllm = vllm
        self.vision = vision
        self.aliases = {normalize_name(k): v for k, v in (aliases or {}).items()}
        self.alias_names = dict(aliases or {})
        self.catalog = catalog or Catalog()
        self.ttl = ttl
        self._entries: dict[str, ModelEntry] = {}
        for entry in self.catalog.models:
            for name in (entry.name, *entry.aliases):
                self._entries[normalize_name(name)] = entry
        self._listings: dict[Backend, _Listing] = {"vllm": _Listing(), "ollama": _Listing()}
        self._locks: dict[Backend, asyncio.Lock] = {"vllm": asyncio.Lock(), "ollama": asyncio.Lock()}
        self._first_seen: dict[str, float] = {}
        self._warned_clashes: set[str] = set()

    # ---- discovery -------------------------------------------------------------------------

    async def listing(self, backend: Backend, *, max_age: float | None = None) -> _Listing:
        """The backend's model list, refreshed when older than `max_age` (default: the TTL)."""
        listing = self._listings[backend]
        max_age = self.ttl if max_age is None else max_age
        if listing.fetched_at and time.monotonic() - listing.fetched_at < max_age:
            return listing
        lock = self._locks[backend]
        async with lock:  # one refresh at a time; waiters reuse its result
            listing = self._listings[backend]
            if listing.fetched_at and time.monotonic() - listing.fetched_at < max_age:
                return listing
            self._listings[backend] = listing = await self._fetch(backend, listing)
        return listing

    async def _fetch(self, backend: Backend, previous: _Listing) -> _Listing:
        upstream = self.vllm if backend == "vllm" else self.vision
        if upstream is None:
            return _Listing(fetched_at=time.monotonic(), ok=False, error="not configured")
        try:
            if backend == "vllm":
                data = await upstream.get_json("/v1/models")
                models = [m for m in (data.get("data") or []) if isinstance(m, dict) and m.get("id")]
            else:
                data = await upstream.get_json("/api/tags")
                models = [
                    m for m in (data.get("models") or []) if isinstance(m, dict) and (m.get("model") or m.get("name"))
                ]
        except (OllamaError, AttributeError) as exc:
            message = exc.message if isinstance(exc, OllamaError) else "unexpected model list shape"
            log.warning("could not list models of %s: %s", upstream.name, message)
            # Keep what we knew (stale beats nothing), but remember the failure and retry soon.
            return _Listing(previous.models, time.monotonic() - max(self.ttl - 1.0, 0), False, message)
        now = time.time()
        for m in models:
            self._first_seen.setdefault(f"{backend}:{m.get('id') or m.get('model') or m.get('name')}", now)
        return _Listing(models, time.monotonic(), True, "")

    def vllm_names(self, cards: list[dict[str, Any]]) -> list[ListedName]:
        """Every name that reaches vLLM (catalog entries and their aliases, MODEL_ALIASES, then
        discovered ids), once each, first definition winning."""
        context = {card["id"]: card.get("max_model_len") for card in cards}
        out: dict[str, ListedName] = {}

        def add(name: str, upstream_id: str, family: str | None = None, context_length: int | None = None) -> None:
            key = normalize_name(name)
            if key not in out:
                out[key] = ListedName(key, name, upstream_id, family, context_length or context.get(upstream_id))

        for entry in self.catalog.models:
            if entry.backend == "vllm":
                for name in (entry.name, *entry.aliases):
                    add(name, entry.upstream_id, entry.family, entry.context_length)
        for alias, target in self.alias_names.items():
            add(alias, target)
        if self.catalog.discover:
            for upstream_id in sorted(context):
                add(upstream_id, upstream_id)
        return list(out.values())

    def first_seen(self, backend: Backend, upstream_id: str) -> float:
        return self._first_seen.setdefault(f"{backend}:{upstream_id}", time.time())

    async def vllm_card(self, upstream_id: str) -> dict[str, Any] | None:
        for card in (await self.listing("vllm")).models:
            if card["id"] == upstream_id:
                return card
        return None

    # ---- resolution ------------------------------------------------------------------------

    async def resolve(self, name: str) -> Route:
        """Model name as a client sends it -> Route. Raises ModelNotFound, or UpstreamUnavailable
        when no backend could be asked and nothing is known."""
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
            card = _match(vllm.models, key, ("id",))
            if card is not None:
                # A vLLM model never waits for Ollama Vision: the clash check uses what is cached.
                ollama = _match(self._listings["ollama"].models, key, ("model", "name"))
                if ollama is not None and key not in self._warned_clashes:
                    self._warned_clashes.add(key)
                    log.warning(
                        "model %r is served by both vLLM and Ollama Vision; vLLM answers it "
                        "(name the model in ADAPTER_MODELS_FILE to choose)",
                        original,
                    )
                return Route("vllm", card["id"], None, card.get("max_model_len"))
            ollama = None
            if self.vision is not None:
                ollama = _match((await self.listing("ollama", max_age=max_age)).models, key, ("model", "name"))
            if ollama is not None:
                return Route("ollama", ollama.get("model") or ollama["name"])
            if not vllm.ok and max_age is not None:
                # vLLM could not be asked: it may well serve this model, so say it is down rather
                # than "not found" (which makes the `ollama` CLI try to pull).
                raise OllamaError(502, vllm.error or f"{self.vllm.name} is unavailable")
        return None

    async def context_length_of(self, route: Route) -> int | None:
        if route.context_length:
            return route.context_length
        if route.backend != "vllm":
            return None
        card = await self.vllm_card(route.upstream_model)
        return card.get("max_model_len") if card else None


def _match(models: list[dict[str, Any]], key: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    for model in models:
        for f in fields:
            value = model.get(f)
            if isinstance(value, str) and normalize_name(value) == key:
                return model
    return None
