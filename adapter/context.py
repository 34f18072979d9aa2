"""What one request is, as the access log and the metrics tell it: one typed record per request.

The middleware creates it; the routes fill it in as they learn (which model, which backend and
replica, streamed or not, token counts); the middleware reads it when the answer is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request


class UpstreamCall(Protocol):
    """A traced upstream call (adapter.otel): the trace-context headers to send, and its end."""

    headers: dict[str, str]

    def end(self, status: int | None, error: str | None = None) -> None: ...


class RequestTrace(Protocol):
    """A traced request (adapter.otel), or None in the facts when tracing is off."""

    def upstream_call(self, name: str, url: str, backend: str, method: str, path: str) -> UpstreamCall: ...

    def end(self, facts: RequestFacts, status: int) -> None: ...


class Tracing(Protocol):
    def start_request(self, method: str, route: str, traceparent: str, tracestate: str) -> RequestTrace: ...

    def shutdown(self) -> None: ...


@dataclass(slots=True)
class RequestFacts:
    request_id: str
    endpoint: str  # a bounded metrics label: the route, not the raw path
    model: str | None = None  # as the client named it
    model_label: str = "none"  # a bounded metrics label: the backend's own model id
    backend: str = "none"  # the backend that answered: a vLLM backend's name, or "ollama"
    replica: str | None = None  # which replica of it (its URL, without credentials)
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fallback: str | None = None  # the Ollama Vision model that stood in for an unavailable vLLM one
    tenant: str | None = None  # whose key it came with (the name: never the key)
    cache_salt: str | None = None  # the tenant's prefix-cache salt, sent with every vLLM request
    ttft: float | None = None  # seconds from the request to vLLM's first token
    finish_reason: str | None = None  # vLLM's, as it said it
    trace: RequestTrace | None = None  # tracing on: the request's server span

    @property
    def tenant_label(self) -> str:
        return self.tenant or "none"

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens, self.completion_tokens = prompt, completion


FACTS_KEY = "facts"


def facts_of(request: Request) -> RequestFacts:
    return request.scope["state"][FACTS_KEY]  # type: ignore[no-any-return]
