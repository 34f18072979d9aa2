"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from adapter.limits import Limiter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ollama_adapter_requests",
            "Requests answered, by endpoint, model, backend and status.",
            ["endpoint", "model", "backend", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ollama_adapter_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ["endpoint", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ollama_adapter_time_to_first_token_seconds",
            "Time from request to the first generated token sent.",
            ["endpoint", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ollama_adapter_prompt_tokens", "Prompt tokens reported by the backend.", ["model", "backend"], registry=r
        )
        self.completion_tokens = Counter(
            "ollama_adapter_completion_tokens",
            "Completion tokens reported by the backend.",
            ["model", "backend"],
            registry=r,
        )
        self.inflight = Gauge(
            "ollama_adapter_inflight_requests", "Requests holding an upstream slot.", ["backend"], registry=r
        )
        self.queued = Gauge(
            "ollama_adapter_queued_requests", "Requests waiting for an upstream slot.", ["backend"], registry=r
        )
        self.upstream_errors = Counter(
            "ollama_adapter_upstream_errors", "Upstream failures by backend and kind.", ["backend", "kind"], registry=r
        )
        self.fallbacks = Counter(
            "ollama_adapter_fallbacks",
            "Requests served by a fallback model because vLLM was unavailable.",
            ["model", "fallback"],
            registry=r,
        )

    def watch_limiter(self, backend: str, limiter: Limiter) -> None:
        """Gauges read the limiter when scraped: nothing to update per request."""
        self.inflight.labels(backend).set_function(lambda: limiter.inflight)
        self.queued.labels(backend).set_function(lambda: limiter.queued)
