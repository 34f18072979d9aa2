"""What one request is, as the access log and the metrics tell it: one typed record per request.

The middleware creates it; the routes fill it in as they learn (which model, which backend and
replica, streamed or not, token counts); the middleware reads it when the answer is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request


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

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens, self.completion_tokens = prompt, completion


FACTS_KEY = "facts"


def facts_of(request: Request) -> RequestFacts:
    return request.scope["state"][FACTS_KEY]  # type: ignore[no-any-return]
