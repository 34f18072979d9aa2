"""Which replica of a backend serves a request: a few dictionary lookups, once per request.

A backend is the vLLM servers of one model group (replicas), or the servers VLLM_BASE_URL lists,
among which each model is served by the ones whose /v1/models lists it.

Picking:
- Replicas that are down (per the health monitor) are skipped while any other is up.
- Without an affinity key: the replica with the fewest outstanding requests (in flight + queued),
  ties broken in turn.
- With one (a hash of the prompt's first characters: a service's long system prompt, or the start of
  one conversation): the replica that served that prefix before, so vLLM's prefix cache there keeps
  hitting, as long as its load stays within `LOAD_BOUND` times the average (beyond it, that request
  goes to the least loaded replica, and the prefix keeps its home). A prefix seen for the first time
  (or whose home is down) goes to the least loaded replica, which becomes its home.
  Prefixes are placed by load rather than on a hash ring (consistent hashing with bounded loads, the
  first version): with a handful of services, hashing gave some replicas twice the prefixes of others,
  and the bound then scattered them. Measured with bench.replicas (3 replicas, 8 services, 128
  streams): 66 % of shared-prefix requests on their home replica with the ring, 98 % placed by load;
  and distinct prompts spread 14 % off even with the ring, 0 % by load.
- The others follow in order of load: a connection that fails before any byte was sent is tried once
  more on the next one.

The homes are remembered per process (the most recent `MAX_HOMES` prefixes of each backend): with
ADAPTER_WORKERS > 1, each worker places a prefix by its own view, so a prefix can have one home per
worker.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from adapter.health import Health
from adapter.upstream import Upstream

# How far above the average load a replica may go and still take its own prefixes: 1.25 keeps loads
# within a quarter of even while shared-prefix requests still find their cache.
LOAD_BOUND = 1.25
MAX_HOMES = 8192  # prefixes remembered per backend (a few hundred KB at most)


@dataclass(eq=False)
class Replica:
    """One upstream server of a backend: its pooled client (with its limiter) and its health."""

    backend: str
    upstream: Upstream
    health: Health = field(default_factory=Health)
    models: frozenset[str] = frozenset()  # what its /v1/models listed last
    listed: bool = False  # whether it has ever answered /v1/models

    @property
    def url(self) -> str:
        return self.upstream.base_url

    @property
    def load(self) -> int:
        limiter = self.upstream.limiter
        return limiter.inflight + limiter.queued


class Backend:
    """A named group of replicas, and where each recent prompt prefix was served."""

    def __init__(self, name: str, replicas: list[Replica], *, discovered: bool) -> None:
        self.name = name
        self.replicas = replicas
        # Discovered (VLLM_BASE_URL's servers): a model is served by the replicas that list it. A
        # catalog backend is one model group: every replica serves its models.
        self.discovered = discovered
        # A request pinned to one replica (X-Adapter-Replica, the cache warmer's) finds it by URL in
        # one lookup, as /health shows it.
        self.by_url = {r.url: r for r in replicas}
        self._homes: OrderedDict[int, Replica] = OrderedDict()
        self._turn = itertools.count()

    def serving(self, model: str) -> list[Replica]:
        """The replicas that serve `model` (all of them when none has said, so the request tries)."""
        if not self.discovered or len(self.replicas) == 1:
            return self.replicas
        listing = [r for r in self.replicas if model in r.models]
        return listing or self.replicas

    def pinned(self, model: str, url: str) -> Replica | None:
        """The replica at `url` if it serves `model` (a discovered one that listed its models must
        list it): the one a pinned request goes to, down or not."""
        replica = self.by_url.get(url)
        if replica is None or (self.discovered and replica.listed and model not in replica.models):
            return None
        return replica

    def candidates(self, model: str, key: int | None) -> list[Replica]:
        """The replicas to try for one request, best first."""
        serving = self.serving(model)
        if len(serving) == 1:
            return serving
        up = [r for r in serving if r.health.available]
        down = [r for r in serving if not r.health.available]
        if not up:
            return sorted(down, key=lambda r: r.load)
        first = self._home(up, key) if key is not None else self._least_loaded(up)
        rest = sorted((r for r in up if r is not first), key=lambda r: r.load)
        return [first, *rest, *down]

    def _least_loaded(self, up: Sequence[Replica]) -> Replica:
        # Ties are broken in turn, so an idle group is filled evenly rather than from its first replica.
        start = next(self._turn) % len(up)
        return min((*up[start:], *up[:start]), key=lambda r: r.load)

    def _home(self, up: Sequence[Replica], key: int) -> Replica:
        home = self._homes.get(key)
        if home is None or home not in up:  # first seen, or its replica is down: a new home
            home = self._homes[key] = self._least_loaded(up)
            if len(self._homes) > MAX_HOMES:
                self._homes.popitem(last=False)
            return home
        self._homes.move_to_end(key)
        bound = math.ceil(LOAD_BOUND * (sum(r.load for r in up) + 1) / len(up))
        if home.load + 1 <= bound:
            return home
        # Over the bound: this request goes elsewhere; the prefix keeps its home (and its cache).
        return self._least_loaded(up)
