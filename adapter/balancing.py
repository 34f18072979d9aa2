"""Which replica of a backend serves a request: a few dictionary lookups and a short ring walk.

A backend is the vLLM servers of one model group (replicas), or the servers VLLM_BASE_URL lists,
among which each model is served by the ones whose /v1/models lists it.

Picking (once per request):
- Replicas that are down (per the health monitor) are skipped while any other is up.
- Without an affinity key: the replica with the fewest outstanding requests (in flight + queued).
- With one (a hash of the prompt's prefix: system prompt and first messages): consistent hashing with
  bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016; HAProxy's hash-balance-factor). The key's
  place on a ring of virtual nodes names a home replica, so requests that share a prefix land where
  vLLM's prefix cache already holds it; when the home replica's load would pass `LOAD_BOUND` times the
  average, the walk moves on to the next replica on the ring.
- The others follow in order of load: a connection that fails before any byte was sent is tried once
  more on the next one.
"""

from __future__ import annotations

import bisect
import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from adapter.health import Health
from adapter.upstream import Upstream

# How far above the average load a replica may go and still take its own prefixes: 1.25 keeps loads
# within a quarter of even while most shared-prefix requests still find their cache.
LOAD_BOUND = 1.25
VIRTUAL_NODES = 160  # per replica: enough for an even split of the ring between a handful of replicas


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


def ring_point(text: str) -> int:
    # crc32, not hash(): the same prefix must land on the same replica in every worker process.
    return zlib.crc32(text.encode())


class Backend:
    """A named group of replicas and its hash ring."""

    def __init__(self, name: str, replicas: list[Replica], *, discovered: bool) -> None:
        self.name = name
        self.replicas = replicas
        # Discovered (VLLM_BASE_URL's servers): a model is served by the replicas that list it. A
        # catalog backend is one model group: every replica serves its models.
        self.discovered = discovered
        points = sorted(
            (ring_point(f"{replica.url}#{i}"), position)
            for position, replica in enumerate(replicas)
            for i in range(VIRTUAL_NODES)
        )
        self._ring_points = [point for point, _ in points]
        self._ring_owners = [position for _, position in points]
        self._turn = itertools.count()

    def serving(self, model: str) -> list[Replica]:
        """The replicas that serve `model` (all of them when none has said, so the request tries)."""
        if not self.discovered or len(self.replicas) == 1:
            return self.replicas
        listing = [r for r in self.replicas if model in r.models]
        return listing or self.replicas

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
        ordered = [*up[start:], *up[:start]]
        return min(ordered, key=lambda r: r.load)

    def _home(self, up: Sequence[Replica], key: int) -> Replica:
        allowed = {id(r) for r in up}
        total = sum(r.load for r in up)
        bound = math.ceil(LOAD_BOUND * (total + 1) / len(up))
        start = bisect.bisect_left(self._ring_points, key)
        size = len(self._ring_points)
        seen: set[int] = set()
        for i in range(size):
            replica = self.replicas[self._ring_owners[(start + i) % size]]
            if id(replica) not in allowed or id(replica) in seen:
                continue
            if replica.load + 1 <= bound:
                return replica
            seen.add(id(replica))
            if len(seen) == len(up):
                break
        return self._least_loaded(up)
