"""Operations endpoints: GET /health (every backend and replica) and GET /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from adapter.balancing import Replica
from adapter.gateway import Gateway
from adapter.routing import Router

# A backend is as healthy as its best replica.
_RANK = ("healthy", "unknown", "starting", "unhealthy", "unreachable")


def _replica(replica: Replica, router: Router | None) -> dict[str, Any]:
    limiter = replica.upstream.limiter
    state = {"url": replica.url, **replica.health.as_dict(), "inflight": limiter.inflight, "queued": limiter.queued}
    if router is not None:
        state["models"] = router.names_on(replica)
    return state


def _group(replicas: list[Replica], router: Router | None = None) -> dict[str, Any]:
    states = [_replica(r, router) for r in replicas]
    best = min(states, key=lambda s: _RANK.index(s["status"]))
    return {
        "status": best["status"],
        "since": best["since"],
        "checked_at": best["checked_at"],
        "detail": best["detail"],
        "inflight": sum(s["inflight"] for s in states),
        "queued": sum(s["queued"] for s in states),
        "replicas": states,
    }


def health_report(gw: Gateway) -> tuple[int, dict[str, object]]:
    """200 when the gateway can serve text requests (some vLLM backend healthy, or chat mode with
    Ollama Vision up for fallbacks), else 503. A backend that is down is a state to report, not a
    gateway error."""
    backends = {name: _group(backend.replicas, gw.router) for name, backend in gw.topology.backends.items()}
    vision = _group([gw.vision])
    healthy = [b["status"] == "healthy" for b in backends.values()]
    vision_ok = vision["status"] == "healthy"
    can_fallback = (
        gw.settings.adapter_mode == "chat" and vision_ok and any(e.fallback for e in gw.router.catalog.models)
    )
    if all(healthy) and vision_ok:
        status = "ok"
    elif any(healthy) or can_fallback:
        status = "degraded"
    else:
        status = "unavailable"
    del vision["replicas"]
    body = {"status": status, "mode": gw.settings.adapter_mode, "backends": {**backends, "ollama_vision": vision}}
    return (200 if status != "unavailable" else 503), body


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    status, body = health_report(gw)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
