"""Where a request goes: model name (+ images, + health, + canary share) -> Route. The only place that
decides which backend serves a request (adapter.balancing then picks the replica).

Names resolve through the catalog, MODEL_ALIASES, then discovery: every vLLM replica's /v1/models and
Ollama Vision's /api/tags. Discovery is cached for ADAPTER_MODELS_TTL seconds, so a request costs a
dictionary lookup, never a listing call; a miss refreshes once (a model that a server started serving a
moment ago). Listing endpoints answer from the cache and refresh in the background, so a backend that
is down never slows them. A model two backends both serve goes to the first (a clash: named at start,
logged later) unless the catalog says which.

Requests with images go to Ollama Vision unless the vLLM model can see; a model whose replicas have all
been down for ADAPTER_FALLBACK_AFTER answers through its catalog fallback on Ollama Vision (chat mode);
a model with a canary sends its share of requests to the canary backend. A request that names one
replica of its model (the REPLICA_HEADER, sent by `python -m adapter warm` to fill every replica's
prefix cache) goes to that replica only: no balancing, no canary turn, no fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from adapter.balancing import Backend, Replica
from adapter.catalog import DEFAULT_BACKEND, OLLAMA_BACKEND, Catalog, ModelEntry, normalize_name
from adapter.errors import BadRequest, ModelNotFound, OllamaError
from adapter.translate.models import ListedName, default_capabilities, ollama_name
from adapter.upstream import Upstream
from vision.proxy import models_of

log = logging.getLogger("adapter.routing")

# How long a listing answer waits for a server it has never heard from (a healthy one answers in ms).
FIRST_LISTING_WAIT = 0.5
# Pins a generation request to one replica of its model, named by its URL as /health shows it.
REPLICA_HEADER = "X-Adapter-Replica"


@dataclass(frozen=True, slots=True)
class Route:
    backend: str  # a vLLM backend's name ("vllm" is VLLM_BASE_URL's servers), or "ollama"
    upstream_model: str  # the id the backend knows (for Ollama Vision: the name as the client wrote it)
    entry: ModelEntry | None = None  # catalog entry, when the catalog names the model
    context_length: int | None = None
    fallback: bool = False  # an Ollama Vision model answers in place of an unavailable vLLM one
    canary: bool = False  # the model's canary backend answers this one
    pinned: Replica | None = None  # REPLICA_HEADER named this replica: it alone is tried

    @property
    def on_vllm(self) -> bool:
        return self.backend != OLLAMA_BACKEND

    @property
    def capabilities(self) -> tuple[str, ...]:
        if self.entry is not None and self.entry.capabilities is not None:
            caps = self.entry.capabilities
        else:
            caps = tuple(default_capabilities(self.upstream_model)) if self.on_vllm else ()
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
    """One server's discovered models and when it was asked."""

    models: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float = 0.0  # monotonic; 0 = never asked
    ok: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class Served:
    """A discovered vLLM model: the backend that answers for it, and its card from /v1/models."""

    backend: str
    card: dict[str, Any]


class Router:
    def __init__(
        self,
        backends: dict[str, Backend],
        vision: Upstream,
        *,
        aliases: dict[str, str] | None = None,
        catalog: Catalog | None = None,
        ttl: float = 10.0,
        mode: str = "chat",
        fallback_after: float = 10.0,
        force_canary: bool = False,
    ) -> None:
        self.backends = backends  # vLLM backends, the default one first
        self.vision = vision
        self.aliases = {normalize_name(k): v for k, v in (aliases or {}).items()}
        self.alias_names = dict(aliases or {})
        self.catalog = catalog or Catalog()
        self.ttl = ttl
        self.mode = mode
        self.fallback_after = max(fallback_after, 1e-9)
        self.force_canary = force_canary  # canary-check: every request with a canary goes to it
        self._entries: dict[str, ModelEntry] = {}
        for entry in self.catalog.models:
            for name in (entry.name, *entry.aliases):
                self._entries[normalize_name(name)] = entry
        # backend -> the catalog entries it serves (as their backend or their canary), for /health.
        self._entries_on: dict[str, list[ModelEntry]] = {}
        for entry in self.catalog.models:
            for owner in (entry.backend, entry.canary.backend if entry.canary else None):
                if owner is not None and owner != OLLAMA_BACKEND:
                    self._entries_on.setdefault(owner, []).append(entry)
        self._replicas: list[Replica] = [r for b in backends.values() for r in b.replicas]
        self._listings: dict[int, Listing] = {id(r): Listing() for r in self._replicas}
        # Until when every vLLM listing is younger than the TTL: a request's lookup then asks nothing
        # and scans nothing (kept by _fetch; 0: some server was never asked).
        self._vllm_fresh_until = 0.0
        self.vision_listing = Listing()
        self._vision_seen = False  # whether Ollama Vision ever answered its model list
        self._vision_by_key: dict[str, dict[str, Any]] = {}
        self._served: dict[str, Served] = {}  # lookup key -> the backend that answers it
        self.clashes: dict[str, tuple[str, ...]] = {}  # lookup key -> backends that all serve it
        self._refreshing: dict[int, asyncio.Task[None]] = {}
        self._first_seen: dict[str, float] = {}
        self._canary_counts: dict[str, int] = {}
        self._warned: set[str] = set()

    # ---- discovery -------------------------------------------------------------------------

    async def refresh(
        self, max_age: float | None = None, *, wait: bool = True, vllm: bool = True, vision: bool = True
    ) -> None:
        """Ask again the servers whose model list is older than `max_age` (default: the TTL): the
        vLLM replicas, Ollama Vision, or both. `wait=False` waits only for servers never asked before
        and refreshes the rest in the background, so answers never wait for a server that is down."""
        max_age = self.ttl if max_age is None else max_age
        now = time.monotonic()
        pending = []
        targets: list[tuple[int, Replica | None, Listing]] = []
        if vllm:
            targets += [(id(r), r, self._listings[id(r)]) for r in self._replicas]
        if vision:
            targets.append((0, None, self.vision_listing))
        for key, target, listing in targets:
            if listing.fetched_at and now - listing.fetched_at < max_age:
                continue
            task = self._refreshing.get(key)
            if task is None:
                task = asyncio.ensure_future(self._fetch(target))
                self._refreshing[key] = task
                task.add_done_callback(lambda _, key=key: self._refreshing.pop(key, None))
            if wait or not listing.fetched_at:
                pending.append(task)
        if pending:
            # A server never asked before is waited for, but not for long: one that does not even
            # accept connections must not hold up what the others can already answer.
            await asyncio.wait(pending, timeout=None if wait else FIRST_LISTING_WAIT)

    async def _fetch(self, replica: Replica | None) -> None:
        upstream = replica.upstream if replica is not None else self.vision
        previous = self._listings[id(replica)] if replica is not None else self.vision_listing
        try:
            if replica is not None:
                data = await upstream.get_json("/v1/models")
                cards = data.get("data") if isinstance(data, dict) else None
                models = [
                    {
                        "id": m["id"],
                        "max_model_len": m.get("max_model_len") if type(m.get("max_model_len")) is int else None,
                    }
                    for m in cards or ()
                    if isinstance(m, dict) and isinstance(m.get("id"), str)
                ]
            else:
                models = models_of(await upstream.get_json("/api/tags"))
        except OllamaError as exc:
            log.warning("could not list models of %s (%s): %s", upstream.name, upstream.base_url, exc.message)
            # Keep what we knew (stale beats nothing), but remember the failure and retry soon.
            listing = Listing(previous.models, time.monotonic() - max(self.ttl - 1.0, 0), False, exc.message)
        else:
            listing = Listing(models, time.monotonic(), True, "")
            now = time.time()
            for m in models:
                where = replica.backend if replica is not None else OLLAMA_BACKEND
                self._first_seen.setdefault(f"{where}:{m.get('id') or ollama_name(m)}", now)
        if replica is None:
            self.vision_listing = listing
            self._vision_seen = self._vision_seen or listing.ok
            self._vision_by_key = {}
            for m in listing.models:
                for name in (m.get("model"), m.get("name")):
                    if isinstance(name, str):
                        self._vision_by_key.setdefault(normalize_name(name), m)
            return
        self._listings[id(replica)] = listing
        self._vllm_fresh_until = min(known.fetched_at for known in self._listings.values()) + self.ttl
        if listing.ok:
            replica.models = frozenset(m["id"] for m in listing.models)
            replica.listed = True
        self._index()

    def _index(self) -> None:
        """Which backend answers each discovered model; models claimed by two backends are clashes."""
        served: dict[str, Served] = {}
        claims: dict[str, list[str]] = {}
        for name, backend in self.backends.items():
            for replica in backend.replicas:
                for card in self._listings[id(replica)].models:
                    key = normalize_name(card["id"])
                    served.setdefault(key, Served(name, card))
                    owners = claims.setdefault(key, [])
                    if name not in owners:
                        owners.append(name)
        self._served = served
        self.clashes = {
            key: tuple(owners) for key, owners in claims.items() if len(owners) > 1 and key not in self._entries
        }
        for key, owners in self.clashes.items():
            if key not in self._warned:
                self._warned.add(key)
                log.error(
                    "model %r is served by backends %s; %r answers it (name it in ADAPTER_MODELS_FILE to choose)",
                    key,
                    ", ".join(repr(o) for o in owners),
                    owners[0],
                )

    def vllm_cards(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(backend, model id) -> the model's card, for every model any vLLM replica lists."""
        cards: dict[tuple[str, str], dict[str, Any]] = {}
        for name, backend in self.backends.items():
            for replica in backend.replicas:
                for card in self._listings[id(replica)].models:
                    cards.setdefault((name, card["id"]), card)
        return cards

    @property
    def vllm_ok(self) -> bool:
        """Whether any vLLM server answered its last listing call."""
        return any(self._listings[id(r)].ok for r in self._replicas)

    def vllm_names(self) -> list[ListedName]:
        """Every name that reaches vLLM (catalog entries and their aliases, MODEL_ALIASES, then
        discovered ids), once each, first definition winning."""
        cards = self.vllm_cards()
        out: dict[str, ListedName] = {}

        def add(name: str, backend: str, upstream_id: str, entry: ModelEntry | None) -> None:
            key = normalize_name(name)
            if key not in out:
                route = Route(backend, upstream_id, entry)
                card = cards.get((backend, upstream_id)) or {}
                length = (entry.context_length if entry else None) or card.get("max_model_len")
                family = entry.family if entry else None
                out[key] = ListedName(key, name, upstream_id, family, length, route.capabilities, backend)

        for entry in self.catalog.models:
            if entry.backend != OLLAMA_BACKEND:
                for name in (entry.name, *entry.aliases):
                    add(name, entry.backend, entry.upstream_id, entry)
        for alias, target in self.alias_names.items():
            entry = self._entries.get(normalize_name(target))
            served = self._served.get(normalize_name(target))
            if entry is not None:
                add(alias, entry.backend, entry.upstream_id, entry)
            elif served is not None or target not in self._vision_by_key:
                add(alias, served.backend if served else DEFAULT_BACKEND, target, None)
        if self.catalog.discover:
            for key in sorted(self._served):
                served = self._served[key]
                add(served.card["id"], served.backend, served.card["id"], None)
        return list(out.values())

    def names_on(self, replica: Replica) -> list[str]:
        """The model names a replica answers (catalog names and aliases, then the ids it lists), as
        /health reports them: what `python -m adapter warm` matches a model against."""
        # A discovered backend's replica serves what it lists; a catalog backend's serve all its models.
        filtered = replica.listed and self.backends[replica.backend].discovered
        names: list[str] = []
        for entry in self._entries_on.get(replica.backend, ()):
            if not filtered or entry.upstream_id in replica.models:
                names += (entry.name, *entry.aliases)
        names += sorted(m for m in replica.models if m not in names)
        return names

    def ollama_entries(self) -> list[tuple[tuple[str, ...], str]]:
        """The catalog's Ollama Vision models: (names, upstream id)."""
        return [((e.name, *e.aliases), e.upstream_id) for e in self.catalog.models if e.backend == OLLAMA_BACKEND]

    def first_seen(self, backend: str, upstream_id: str) -> float:
        return self._first_seen.setdefault(f"{backend}:{upstream_id}", time.time())

    # ---- resolution ------------------------------------------------------------------------

    async def resolve(self, name: str) -> Route:
        """Model name as a client sends it -> where it lives. Raises ModelNotFound, or a 502 when
        no vLLM server could be asked and nothing is known."""
        key = normalize_name(name)
        entry = self._entries.get(key)
        if entry is not None:
            return Route(entry.backend, entry.upstream_id, entry, entry.context_length)
        if key in self.aliases:
            target = self.aliases[key]
            target_entry = self._entries.get(normalize_name(target))
            if target_entry is not None:
                return Route(target_entry.backend, target_entry.upstream_id, target_entry, target_entry.context_length)
            return await self._discovered(target) or Route(DEFAULT_BACKEND, target)
        if not self.catalog.discover:
            raise ModelNotFound(name)
        route = await self._discovered(name)
        if route is None:
            raise ModelNotFound(name)
        return route

    async def _discovered(self, wanted: str) -> Route | None:
        key = normalize_name(wanted)
        for max_age in (None, 1.0):  # cached first; on a miss, ask again what is older than a second
            if max_age is not None or time.monotonic() >= self._vllm_fresh_until:
                await self.refresh(max_age, wait=max_age is not None, vision=False)
            served = self._served.get(key)
            if served is not None:
                if key in self._vision_by_key and key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "model %r is served by both vLLM and Ollama Vision; vLLM answers it "
                        "(name the model in ADAPTER_MODELS_FILE to choose)",
                        wanted,
                    )
                return Route(served.backend, served.card["id"], None, served.card.get("max_model_len"))
            # A vLLM model never waits for Ollama Vision's list; only a name vLLM does not know does.
            await self.refresh(max_age, wait=max_age is not None, vllm=False)
            if key in self._vision_by_key:
                return Route(OLLAMA_BACKEND, wanted)  # the name as given: Ollama Vision resolves it itself
            if not self.vllm_ok and max_age is not None:
                # vLLM could not be asked: it may well serve this model, so say it is down rather
                # than "not found" (which makes the `ollama` CLI try to pull).
                errors = {self._listings[id(r)].error for r in self._replicas} - {""}
                tried = "; ".join(sorted(errors)) or "vLLM is unavailable"
                raise OllamaError(502, f"{tried} (model '{wanted}' could not be looked up)")
        if not self.vision_listing.ok and self._vision_seen:
            # Not vLLM's, and Ollama Vision, which answered before, cannot be asked now: it may well
            # have it. Say so rather than "not found". (One never reached is taken as not deployed.)
            raise OllamaError(502, self.vision_listing.error or "Ollama Vision is unavailable")
        return None

    async def route(self, name: str, *, images: bool = False, replica: str | None = None) -> Route:
        """Where a generation request goes: images go to Ollama Vision unless the vLLM model can
        see; a model down for ADAPTER_FALLBACK_AFTER answers through its fallback (chat mode); a
        model with a canary sends its share to the canary backend. `replica` (REPLICA_HEADER) pins
        the request to that replica of the model (or of its canary)."""
        route = await self.resolve(name)
        if replica is not None:
            return self._pinned(name, route, images, replica)
        if not route.on_vllm:
            return route
        if images and "vision" not in route.capabilities:
            return Route(OLLAMA_BACKEND, name)
        if route.entry is not None and route.entry.canary is not None and self._canary_turn(route.entry):
            route = replace(route, backend=route.entry.canary.backend, canary=True)
        if self.down_for(route) >= self.fallback_after:
            return self.fallback(route) or route
        return route

    def _pinned(self, name: str, route: Route, images: bool, url: str) -> Route:
        """The route to the one replica REPLICA_HEADER names: the model's backend's, or its canary's
        (whose prefix cache serves its share too). A lookup per backend; a 400 naming the replicas
        the model has when the URL is not one of them."""
        if not route.on_vllm or (images and "vision" not in route.capabilities):
            raise BadRequest(f"{REPLICA_HEADER}: model {name!r} is answered by Ollama Vision, not by a vLLM replica")
        url = url.strip().rstrip("/")
        owners = [route.backend]
        if route.entry is not None and route.entry.canary is not None:
            owners.append(route.entry.canary.backend)
        for owner in owners:
            backend = self.backends.get(owner)
            replica = backend.pinned(route.upstream_model, url) if backend is not None else None
            if replica is not None:
                return replace(route, backend=owner, canary=owner != route.backend, pinned=replica)
        known = [r.url for o in owners if o in self.backends for r in self.backends[o].serving(route.upstream_model)]
        raise BadRequest(
            f"{REPLICA_HEADER}: {url!r} is not a replica of model {name!r} (its replicas: {', '.join(known) or 'none'})"
        )

    def _canary_turn(self, entry: ModelEntry) -> bool:
        """Exactly `share` percent of the model's requests, evenly spaced (no randomness to explain)."""
        if self.force_canary:
            return True
        assert entry.canary is not None
        n = self._canary_counts.get(entry.name, 0)
        self._canary_counts[entry.name] = n + 1
        share = entry.canary.share / 100
        return int((n + 1) * share) > int(n * share)

    def down_for(self, route: Route) -> float:
        """Seconds every replica that could serve the route has been down (0 while one is up)."""
        backend = self.backends.get(route.backend)
        if backend is None:
            return 0.0
        return min((r.health.unhealthy_for() for r in backend.serving(route.upstream_model)), default=0.0)

    def fallback(self, route: Route) -> Route | None:
        """The fallback for a vLLM route whose backend cannot serve it now, if it has one: only in
        chat mode, and only for models whose catalog entry names one."""
        if self.mode != "chat" or not route.on_vllm or route.entry is None or not route.entry.fallback:
            return None
        if route.pinned is not None:
            return None  # a pinned request is about that replica: its failure is the answer
        # The fallback may be a catalog name of an Ollama Vision model, or Ollama Vision's own name.
        named = self._entries.get(normalize_name(route.entry.fallback))
        model = named.upstream_id if named is not None and named.backend == OLLAMA_BACKEND else route.entry.fallback
        return replace(Route(OLLAMA_BACKEND, model), fallback=True)

    def unavailable(self, exc: OllamaError) -> OllamaError:
        """What a client hears when no replica of a vLLM route could be reached and no fallback
        answers: in ingestion mode a 503 (retry later: the batch job waits for vLLM), else the 502."""
        if self.mode == "ingestion":
            return OllamaError(503, f"vLLM is unavailable (ingestion mode: no fallback): {exc.message}")
        return exc

    def replicas_for(self, route: Route, key: int | None) -> list[Replica]:
        """The replicas to try for a vLLM route, best first (adapter.balancing)."""
        if route.pinned is not None:
            return [route.pinned]
        return self.backends[route.backend].candidates(route.upstream_model, key)

    async def context_length_of(self, route: Route) -> int | None:
        if route.context_length:
            return route.context_length
        if not route.on_vllm:
            return None
        await self.refresh(wait=False)
        card = self.vllm_cards().get((route.backend, route.upstream_model))
        return card.get("max_model_len") if card else None
