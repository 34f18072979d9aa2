"""Health, fallback and modes, back-pressure, timeouts, metrics, logs and security."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import httpx
import ollama
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import all_slots_free, make_settings, running_gateway
from tests.standins.server import ServerThread
from tests.standins.vllm import Script, VLLMStandin

FALLBACK_CATALOG = "models:\n  - name: chat\n    upstream: tiny\n    fallback: llava:7b\n"


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_health_reports_backends(http: httpx.Client) -> None:
    assert wait_for(lambda: http.get("/health").json()["backends"]["vllm"]["status"] == "healthy")
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["mode"] == "chat"
    assert body["backends"]["ollama_vision"]["status"] == "healthy"


def test_health_when_vllm_is_starting_and_dies(vision_server, down_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(down_url, vision_server[1].url, adapter_health_interval=0.1)
    with running_gateway(settings) as url:
        assert wait_for(lambda: httpx.get(url + "/health").json()["backends"]["vllm"]["status"] == "starting")
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert httpx.get(url + "/").text == "Ollama is running"

    standin = VLLMStandin(models=["tiny"])
    with ServerThread(standin.app()) as upstream:
        with running_gateway(make_settings(upstream.url, vision_server[1].url, adapter_health_interval=0.1)) as url:
            assert wait_for(lambda: httpx.get(url + "/health").status_code == 200)
            standin.healthy = False  # vLLM's engine died: /health answers 503
            assert wait_for(lambda: httpx.get(url + "/health").json()["backends"]["vllm"]["status"] == "unhealthy")
            assert httpx.get(url + "/health").status_code == 503


def test_fallback_in_chat_mode_and_recovery(tmp_path: Path, vision_server) -> None:  # type: ignore[no-untyped-def]
    catalog = tmp_path / "models.yaml"
    catalog.write_text(FALLBACK_CATALOG)
    standin = VLLMStandin(models=["tiny"])
    upstream = ServerThread(standin.app()).start()
    port = upstream.port
    settings = make_settings(
        upstream.url,
        vision_server[1].url,
        adapter_models_file=catalog,
        adapter_health_interval=0.1,
        adapter_fallback_after=0.2,
    )
    vision = vision_server[0]
    vision.reset()
    with running_gateway(settings) as url:
        c = ollama.Client(host=url)
        assert c.chat(model="chat", messages=[{"role": "user", "content": "x"}]).message.content == "Hello from tiny!"
        upstream.stop()  # pull the plug on vLLM
        resp = c.chat(model="chat", messages=[{"role": "user", "content": "x"}])
        assert resp.message.content == "I see a cat" and resp.model == "chat"  # nothing different to the client
        parts = list(c.chat(model="chat", messages=[{"role": "user", "content": "x"}], stream=True))
        assert {p.model for p in parts} == {"chat"} and parts[-1].done
        assert vision.requests[-1]["body"]["model"] == "llava:7b"
        metrics = httpx.get(url + "/metrics").text
        assert 'ollama_adapter_fallbacks_total{fallback="llava:7b",model="tiny"}' in metrics
        # vLLM comes back: requests return to it once the monitor sees it healthy.
        back = ServerThread(standin.app(), port=port).start()
        try:
            assert wait_for(lambda: httpx.get(url + "/health").json()["backends"]["vllm"]["status"] == "healthy")
            assert (
                c.chat(model="chat", messages=[{"role": "user", "content": "x"}]).message.content == "Hello from tiny!"
            )
        finally:
            back.stop()


def test_ingestion_mode_refuses_without_fallback(tmp_path: Path, vision_server, down_url: str) -> None:  # type: ignore[no-untyped-def]
    catalog = tmp_path / "models.yaml"
    catalog.write_text(FALLBACK_CATALOG)
    settings = make_settings(down_url, vision_server[1].url, adapter_models_file=catalog, adapter_mode="ingestion")
    with running_gateway(settings) as url:
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=url).chat(model="chat", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 503
        assert info.value.error.startswith("vLLM is unavailable (ingestion mode: no fallback): ")


def test_back_pressure_queue_then_503(vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    vllm = vllm_server[0]
    vllm.reset()
    vllm.script = Script(tokens=["a", "b"], delay=0.3)
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_max_inflight=2, adapter_max_queue=2)
    with running_gateway(settings) as url:

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False}
                return await asyncio.gather(*(http.post("/api/chat", json=body) for _ in range(6)))

        results = asyncio.run(run())
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 200, 200, 200, 503, 503]
        busy = next(r for r in results if r.status_code == 503)
        assert busy.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
        assert busy.headers["retry-after"] == "1"
        assert all_slots_free(httpx.get(url + "/metrics").text)


def test_first_token_timeout_frees_slot(vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    vllm = vllm_server[0]
    vllm.reset()
    vllm.script = Script(tokens=["late"], first_delay=2.0)
    settings = make_settings(
        vllm_server[1].url, vision_server[1].url, adapter_first_token_timeout=0.3, adapter_total_timeout=0.6
    )
    with running_gateway(settings) as url:
        start = time.monotonic()
        r = httpx.post(url + "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
        assert time.monotonic() - start < 1.5
        last = orjson.loads(r.content.splitlines()[-1])
        assert "timed out" in last["error"]
        r = httpx.post(
            url + "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False}
        )
        assert r.status_code == 504 and "timed out" in r.json()["error"]
        assert wait_for(lambda: vllm.active == 0)
        assert all_slots_free(httpx.get(url + "/metrics").text)


def test_metrics_parse_and_count(http: httpx.Client, client: ollama.Client) -> None:
    client.chat(model="tiny", messages=[{"role": "user", "content": "x"}])
    list(client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True))
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    for name in (
        "ollama_adapter_requests",
        "ollama_adapter_request_duration_seconds",
        "ollama_adapter_time_to_first_token_seconds",
        "ollama_adapter_prompt_tokens",
        "ollama_adapter_completion_tokens",
        "ollama_adapter_inflight_requests",
        "ollama_adapter_queued_requests",
        "ollama_adapter_upstream_errors",
        "ollama_adapter_fallbacks",
    ):
        assert name in families, name
    requests = [
        s
        for s in families["ollama_adapter_requests"].samples
        if s.labels.get("endpoint") == "/api/chat" and s.name.endswith("_total")
    ]
    assert any(
        s.labels["model"] == "tiny" and s.labels["backend"] == "vllm" and s.labels["status"] == "200" for s in requests
    )
    completion = [s for s in families["ollama_adapter_completion_tokens"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in completion) >= 8


def test_request_id_and_access_log(http: httpx.Client, vllm: VLLMStandin, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="adapter.access"):
        r = http.post(
            "/api/chat",
            json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False},
            headers={"X-Request-ID": "abc123"},
        )
    assert r.headers["x-request-id"] == "abc123"
    assert vllm.requests[-1]["headers"]["x-request-id"].startswith("abc123-")
    lines = [orjson.loads(rec.getMessage()) for rec in caplog.records if rec.name == "adapter.access"]
    line = next(entry for entry in lines if entry["request_id"] == "abc123")
    assert line["status"] == 200 and line["model"] == "tiny" and line["backend"] == "vllm"
    assert line["completion_tokens"] == 4
    assert len(http.get("/").headers["x-request-id"]) == 24  # generated when absent


def test_api_key(vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_api_key="s3cret")
    with running_gateway(settings) as url:
        assert httpx.get(url + "/").status_code == 200
        assert httpx.get(url + "/health").status_code in (200, 503)
        r = httpx.get(url + "/api/tags")
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
        assert httpx.get(url + "/api/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/api/tags", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=url).list()
        assert info.value.status_code == 401
        authed = ollama.Client(host=url, headers={"Authorization": "Bearer s3cret"})
        assert authed.chat(model="tiny", messages=[{"role": "user", "content": "x"}]).done


def test_foreign_origin_refused(http: httpx.Client) -> None:
    r = http.get("/api/tags", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "not allowed" in r.json()["error"]
    r = http.post(
        "/api/chat",
        headers={"Origin": "https://evil.example"},
        json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 403
    ok = http.get("/api/tags", headers={"Origin": "http://localhost:3000"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    pre = http.options("/api/chat", headers={"Origin": "vscode-webview://abc", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and "POST" in pre.headers["access-control-allow-methods"]


def test_configured_origins(vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_origins="https://*.corp.example")
    with running_gateway(settings) as url:
        assert httpx.get(url + "/api/version", headers={"Origin": "https://chat.corp.example"}).status_code == 200
        assert httpx.get(url + "/api/version", headers={"Origin": "https://corp.example.evil"}).status_code == 403


def test_body_cap(vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_max_body_bytes=4096)
    with running_gateway(settings) as url:
        big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 10_000}]}
        r = httpx.post(url + "/api/chat", json=big)
        assert r.status_code == 413 and "too large" in r.json()["error"]

        def chunked():  # no Content-Length: the cap holds while reading
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        r = httpx.post(url + "/api/generate", content=chunked())
        assert r.status_code == 413


def test_credentials_never_echoed(vision_server) -> None:  # type: ignore[no-untyped-def]
    from tests.standins.server import dead_port

    url = f"http://user:hunter2@127.0.0.1:{dead_port()}"
    settings = make_settings(url, vision_server[1].url, vllm_api_key="sk-topsecret")
    with running_gateway(settings) as gw:
        r = httpx.post(gw + "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502
        assert "hunter2" not in r.text and "topsecret" not in r.text
        assert "hunter2" not in httpx.get(gw + "/health").text


def test_vllm_recovers_mid_run(vision_server) -> None:  # type: ignore[no-untyped-def]
    standin = VLLMStandin(models=["tiny"])
    upstream = ServerThread(standin.app()).start()
    port = upstream.port
    with running_gateway(make_settings(upstream.url, vision_server[1].url)) as url:
        c = ollama.Client(host=url)
        assert c.chat(model="tiny", messages=[{"role": "user", "content": "x"}]).done
        upstream.stop()
        with pytest.raises(ollama.ResponseError) as info:
            c.chat(model="tiny", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 502
        back = ServerThread(standin.app(), port=port).start()
        try:
            assert c.chat(model="tiny", messages=[{"role": "user", "content": "x"}]).done
        finally:
            back.stop()


@pytest.mark.slow
def test_256_concurrent_streams_complete(vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    vllm = vllm_server[0]
    vllm.reset()
    vllm.script = Script(tokens=[f" w{i}" for i in range(32)], delay=0.01)
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_access_log=False)
    with running_gateway(settings) as url:

        async def one(http: httpx.AsyncClient, n: int) -> str:
            text = ""
            async with http.stream(
                "POST", "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": str(n)}]}
            ) as r:
                async for line in r.aiter_lines():
                    obj = orjson.loads(line)
                    assert "error" not in obj
                    text += obj["message"]["content"]
                    if obj["done"]:
                        assert obj["eval_count"] == 32
            return text

        async def run() -> list[str]:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
                return await asyncio.wait_for(asyncio.gather(*(one(http, n) for n in range(256))), 60)

        texts = asyncio.run(run())
        expected = "".join(f" w{i}" for i in range(32))
        assert texts == [expected] * 256
        assert wait_for(lambda: vllm.active == 0)
        assert all_slots_free(httpx.get(url + "/metrics").text)


def test_concurrent_requests_are_isolated(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=["a", "b", "c"], delay=0.01)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            assert client.chat(model="tiny", messages=[{"role": "user", "content": "x"}]).message.content == "abc"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
