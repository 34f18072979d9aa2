"""Prometheus metrics, one registry per app (tests build many apps in one process).

With several worker processes (ADAPTER_WORKERS), prometheus-client's multiprocess mode keeps each
worker's values in files under PROMETHEUS_MULTIPROC_DIR, and /metrics sums them: counters and
histograms add up, the in-flight and queue gauges add up over the live workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def live_gauge_pids() -> set[int]:
    """The processes with in-flight or queue gauges in the multiprocess directory."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    pids = (db.stem.rsplit("_", 1)[1] for db in directory.glob("gauge_live*_*.db"))
    return {int(pid) for pid in pids if pid.isdigit()}  # prometheus-client names them gauge_<mode>_<pid>.db


def forget_workers(pids: Iterable[int]) -> None:
    """Gauges summed over live workers ("livesum") drop the given, gone, worker processes. Their
    counters and histograms stay: what a worker counted before it went still happened."""
    for pid in pids:
        mark_process_dead(pid)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ollama_adapter_requests",
            "Requests answered, by endpoint, model, backend, status and tenant (its name; none without keys).",
            ["endpoint", "model", "backend", "status", "tenant"],
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
            "Time from request to the first generated token from the backend.",
            ["endpoint", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ollama_adapter_prompt_tokens",
            "Prompt tokens reported by the backend.",
            ["model", "backend", "tenant"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "ollama_adapter_completion_tokens",
            "Completion tokens reported by the backend.",
            ["model", "backend", "tenant"],
            registry=r,
        )
        self.replica_requests = Counter(
            "ollama_adapter_replica_requests",
            "Requests sent to each upstream server, by backend and replica.",
            ["backend", "replica"],
            registry=r,
        )
        self.inflight = Gauge(
            "ollama_adapter_inflight_requests",
            "Requests holding a slot of an upstream server.",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "ollama_adapter_queued_requests",
            "Requests waiting for a slot of an upstream server.",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "ollama_adapter_upstream_errors",
            "Upstream failures by backend, replica and kind.",
            ["backend", "replica", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "ollama_adapter_fallbacks",
            "Requests served by a fallback model because vLLM was unavailable.",
            ["model", "fallback"],
            registry=r,
        )

    def limiter_gauges(self, backend: str, replica: str) -> tuple[Gauge, Gauge]:
        inflight, queued = self.inflight.labels(backend, replica), self.queued.labels(backend, replica)
        inflight.set(0)
        queued.set(0)
        return inflight, queued

    def forget_replica(self, backend: str, replica: str) -> None:
        """A replica the catalog no longer names leaves no series behind."""
        for gauge in (self.inflight, self.queued):
            try:
                gauge.remove(backend, replica)
            except KeyError:
                pass

    def exposition(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
