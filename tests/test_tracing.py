"""Tracing (LLM_TRACE_EXPORTER=otlp), checked at an OTLP/HTTP receiver started by the test, which
decodes the exported spans with opentelemetry-proto: the server span continues the client's trace,
each upstream call is its child, the `traceparent` the stand-in upstream received is that client
span's, the gen_ai attributes are there and no prompt or answer is. With tracing off, nothing of
OpenTelemetry is even imported; an unreachable collector costs requests nothing and is logged once."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread
from tests.standins.vllm import VLLMStandin
from tests.test_catalog_live import ROOT, clean_env, wait_for

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
PROMPT = "the secret recipe is 42 parts basil"


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    service: str
    start: int  # ns since the epoch


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP collector in miniature: POST /v1/traces, protobuf in, spans kept."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with self._lock:
            self.raw.append(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                span.name,
                                span.kind,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                {a.key: _value(a.value) for a in span.attributes},
                                str(resource.get("service.name", "")),
                                span.start_time_unix_nano,
                            )
                        )
        return Response(b"", media_type="application/x-protobuf")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    def find(self, predicate: Any, timeout: float = 10.0) -> list[ReceivedSpan]:
        found: list[ReceivedSpan] = []

        def seen() -> bool:
            with self._lock:
                found[:] = [s for s in self.spans if predicate(s)]
            return bool(found)

        assert wait_for(seen, timeout), f"no such span among {[s.name for s in self.spans]}"
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    collector = OtlpReceiver()
    with ServerThread(collector.app()) as server:
        yield collector, server.url


@pytest.fixture
def traced_gateway(
    receiver: tuple[OtlpReceiver, str],
    vllm_server: tuple[VLLMStandin, ServerThread],
    vision_server: tuple[OllamaStandin, ServerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver[1])
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms: the test need not wait 5 s for a batch
    vllm_server[0].reset()
    vision_server[0].reset()
    vision_server[0].models = {"llava:7b": "llava", "nomic-embed-text:latest": "nomic-bert"}
    settings = make_settings(vllm_server[1].url, vision_server[1].url, llm_trace_exporter="otlp")
    with running_gateway(settings) as url:
        yield url


def test_a_streamed_chat_is_one_trace_from_the_client_into_vllm(
    traced_gateway: str,
    receiver: tuple[OtlpReceiver, str],
    vllm: VLLMStandin,
    vllm_server: tuple[VLLMStandin, ServerThread],
) -> None:
    collector = receiver[0]
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque", "X-Request-ID": "traced-1"}
    r = httpx.post(traced_gateway + "/api/chat", json=body, headers=headers, timeout=10)
    assert r.status_code == 200 and b'"done":true' in r.content

    (server,) = collector.find(lambda s: s.attributes.get("vllm_ollama_adapter.request_id") == "traced-1")
    assert server.kind == 2 and server.name == "POST /api/chat"  # SPAN_KIND_SERVER
    assert server.trace_id == CLIENT_TRACE_ID and server.parent_span_id == CLIENT_SPAN_ID
    assert server.service == "gateway-under-test"
    (call,) = collector.find(lambda s: s.parent_span_id == server.span_id)
    assert call.kind == 3 and call.trace_id == CLIENT_TRACE_ID  # SPAN_KIND_CLIENT
    assert call.name == "POST /v1/chat/completions"
    assert call.attributes["http.response.status_code"] == 200

    # What vLLM received continues the gateway's client span, with the client's tracestate.
    sent = vllm.requests[-1]["headers"]
    assert sent["traceparent"] == f"00-{CLIENT_TRACE_ID}-{call.span_id}-01"
    assert sent["tracestate"] == "vendor=opaque"

    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "vllm"
    assert attrs["gen_ai.request.model"] == "tiny" and attrs["gen_ai.response.model"] == "tiny"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert 0 < attrs["gen_ai.latency.time_to_first_token"] < 10
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["vllm_ollama_adapter.backend"] == "vllm"
    assert attrs["vllm_ollama_adapter.replica"] == vllm_server[1].url
    assert call.attributes["vllm_ollama_adapter.replica"] == attrs["vllm_ollama_adapter.replica"]
    assert attrs["http.response.status_code"] == 200
    # Spans carry no prompt and no answer.
    answer = "".join(line for line in r.text.splitlines() if '"content"' in line)
    exported = b"".join(collector.raw)
    assert PROMPT.encode() not in exported and answer
    for word in ("basil", "recipe"):
        assert word.encode() not in exported


def test_a_request_without_trace_context_starts_a_trace_and_vision_calls_are_traced(
    traced_gateway: str, receiver: tuple[OtlpReceiver, str], vision: OllamaStandin
) -> None:
    collector = receiver[0]
    body = {"model": "nomic-embed-text", "input": PROMPT}
    r = httpx.post(traced_gateway + "/api/embed", json=body, headers={"X-Request-ID": "traced-2"}, timeout=10)
    assert r.status_code == 200
    (server,) = collector.find(lambda s: s.attributes.get("vllm_ollama_adapter.request_id") == "traced-2")
    assert server.parent_span_id == "" and server.trace_id != CLIENT_TRACE_ID
    assert server.attributes["gen_ai.operation.name"] == "embeddings"
    assert server.attributes["vllm_ollama_adapter.backend"] == "ollama"
    assert server.attributes["gen_ai.provider.name"] == "ollama"
    (call,) = collector.find(lambda s: s.parent_span_id == server.span_id)
    assert call.attributes["peer.service"] == "Ollama Vision"
    # Flags 03: sampled, and (W3C trace context level 2) a random trace id the gateway made.
    assert vision.requests[-1]["headers"]["traceparent"] == f"00-{server.trace_id}-{call.span_id}-03"


def test_calls_made_outside_an_exchange_are_traced_too(
    traced_gateway: str, receiver: tuple[OtlpReceiver, str], vision: OllamaStandin
) -> None:
    """A blob upload and Ollama Vision's /api/ps (vLLM's /tokenize goes the same way)."""
    collector = receiver[0]
    digest = "sha256:" + "b" * 64
    r = httpx.post(traced_gateway + f"/api/blobs/{digest}", content=b"x" * 1000, headers={"X-Request-ID": "blob"})
    assert r.status_code == 201
    (server,) = collector.find(lambda s: s.attributes.get("vllm_ollama_adapter.request_id") == "blob")
    (call,) = collector.find(lambda s: s.parent_span_id == server.span_id)
    assert call.name == f"POST /api/blobs/{digest}" and call.attributes["http.response.status_code"] == 201
    assert vision.requests[-1]["headers"]["traceparent"] == f"00-{server.trace_id}-{call.span_id}-03"

    assert httpx.get(traced_gateway + "/api/ps", headers={"X-Request-ID": "ps"}).status_code == 200
    (server,) = collector.find(lambda s: s.attributes.get("vllm_ollama_adapter.request_id") == "ps")
    (call,) = collector.find(lambda s: s.parent_span_id == server.span_id)
    assert call.name == "GET /api/ps" and call.attributes["http.response.status_code"] == 200


def test_a_truncated_chat_shows_every_call_it_took(
    receiver: tuple[OtlpReceiver, str],
    vision_server: tuple[OllamaStandin, ServerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Too long for vLLM's context: the refused attempt, the /tokenize search, the answer, in order."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver[1])
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    collector = receiver[0]
    standin = VLLMStandin(models=["tiny"], max_model_len=60)  # counts words: the history below is ~210
    messages = [{"role": "user", "content": f"turn {i} " + "word " * 8} for i in range(20)]
    with ServerThread(standin.app()) as vllm_server:
        settings = make_settings(vllm_server.url, vision_server[1].url, llm_trace_exporter="otlp")
        with running_gateway(settings) as url:
            body = {"model": "tiny", "messages": messages, "stream": False}
            r = httpx.post(url + "/api/chat", json=body, headers={"X-Request-ID": "truncated"}, timeout=10)
    assert r.status_code == 200
    (server,) = collector.find(lambda s: s.attributes.get("vllm_ollama_adapter.request_id") == "truncated")
    calls = collector.find(lambda s: s.parent_span_id == server.span_id)
    names = [c.name for c in sorted(calls, key=lambda c: c.start)]
    assert names[0] == names[-1] == "POST /v1/chat/completions" and len(names) >= 3
    assert set(names[1:-1]) == {"POST /tokenize"}
    statuses = [c.attributes["http.response.status_code"] for c in sorted(calls, key=lambda c: c.start)]
    assert statuses[0] == 400 and statuses[-1] == 200
    sent = {r["headers"]["traceparent"].split("-")[2] for r in standin.requests}
    assert sent == {c.span_id for c in calls}


def test_an_unreachable_collector_costs_requests_nothing_and_is_logged_once(
    vllm_server: tuple[VLLMStandin, ServerThread],
    vision_server: tuple[OllamaStandin, ServerThread],
    down_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", down_url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")  # many batches, so many losses
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    vllm_server[0].reset()
    settings = make_settings(vllm_server[1].url, vision_server[1].url, llm_trace_exporter="otlp")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False}
    with caplog.at_level(logging.INFO), running_gateway(settings) as url, httpx.Client(timeout=10) as http:
        slowest = 0.0
        for _ in range(20):
            started = time.perf_counter()
            assert http.post(url + "/api/chat", json=body).status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.01)
        assert wait_for(lambda: any("could not be exported" in r.getMessage() for r in caplog.records))
        time.sleep(0.3)  # more batches fail meanwhile
    assert slowest < 0.5, f"a request took {slowest:.3f} s while the collector was down"
    lost = [r for r in caplog.records if "export" in r.getMessage().lower()]
    assert len(lost) == 1, [r.getMessage() for r in lost]


MODULES_AFTER_A_REQUEST = """
import sys
from starlette.testclient import TestClient
from adapter.app import create_app
from adapter.config import Settings
with TestClient(create_app(Settings())) as client:
    assert client.get("/api/version").status_code == 200
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


@pytest.mark.parametrize(("exporter", "loaded"), [("none", False), ("otlp", True)])
def test_opentelemetry_is_imported_only_when_tracing_is_on(exporter: str, loaded: bool, down_url: str) -> None:
    env = clean_env(LLM_TRACE_EXPORTER=exporter, OTEL_EXPORTER_OTLP_ENDPOINT=down_url, VLLM_BASE_URL=down_url)
    proc = subprocess.run(
        [sys.executable, "-c", MODULES_AFTER_A_REQUEST], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    modules = proc.stdout.strip().splitlines()[-1]
    assert (modules != "[]") is loaded, modules
    if loaded:
        assert "'opentelemetry.sdk.trace'" in modules


def _start_gateway(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=clean_env(**env),
    )


def test_tracing_settings_are_checked_at_start() -> None:
    proc = _start_gateway(LLM_TRACE_EXPORTER="jaeger")
    assert proc.returncode != 0 and "LLM_TRACE_EXPORTER" in proc.stderr and "Traceback" not in proc.stderr
    proc = _start_gateway(LLM_TRACE_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    assert proc.returncode != 0 and "OTEL_EXPORTER_OTLP_PROTOCOL" in proc.stderr and "http/protobuf" in proc.stderr
