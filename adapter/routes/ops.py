"""Operations endpoints: GET /health (backend states) and GET /metrics (Prometheus)."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from adapter.gateway import Gateway


def health_report(gw: Gateway) -> tuple[int, dict[str, object]]:
    """200 when the gateway can serve text requests (vLLM healthy, or chat mode with Ollama Vision
    up for fallbacks), else 503. A backend that is down is a state to report, not a gateway error."""
    states = gw.monitor.states
    vllm_ok = states["vllm"].status == "healthy"
    vision_ok = states["ollama"].status == "healthy"
    can_fallback = (
        gw.settings.adapter_mode == "chat" and vision_ok and any(e.fallback for e in gw.router.catalog.models)
    )
    if vllm_ok and vision_ok:
        status = "ok"
    elif vllm_ok or can_fallback:
        status = "degraded"
    else:
        status = "unavailable"
    body = {
        "status": status,
        "mode": gw.settings.adapter_mode,
        "backends": {"vllm": states["vllm"].as_dict(), "ollama_vision": states["ollama"].as_dict()},
        "inflight": {"vllm": gw.vllm.limiter.inflight, "ollama_vision": gw.vision.limiter.inflight},
        "queued": {"vllm": gw.vllm.limiter.queued, "ollama_vision": gw.vision.limiter.queued},
    }
    return (200 if status != "unavailable" else 503), body


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    status, body = health_report(gw)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
