"""Ollama Vision pass-through, one model list, the rest of the read API, management calls, /v1."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from adapter.catalog import CatalogError, load_catalog
from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread
from tests.standins.vllm import Script, VLLMStandin

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


def test_list_merges_both_backends(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert "tiny:latest" in names and "llava:7b" in names and "nomic-embed-text:latest" in names
    llava = next(m for m in client.list().models if m.model == "llava:7b")
    assert llava.details.format == "gguf"  # Ollama Vision's own description, untouched


def test_embed_and_embeddings_forwarded(client: ollama.Client, vision: OllamaStandin, vllm: VLLMStandin) -> None:
    resp = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert resp.embeddings == [[0.6, 0.8, 0.0], [0.6, 0.8, 0.0]]
    legacy = client.embeddings(model="nomic-embed-text", prompt="a")
    assert legacy.embedding == [0.1, 0.2, 0.3]
    assert [r["path"] for r in vision.requests] == ["/api/embed", "/api/embeddings"]
    assert vllm.requests == []


def test_chat_with_images_goes_to_vision(client: ollama.Client, vision: OllamaStandin, vllm: VLLMStandin) -> None:
    resp = client.chat(model="llava:7b", messages=[{"role": "user", "content": "what is this?", "images": [PNG]}])
    assert resp.message.content == "I see a cat"
    parts = list(
        client.chat(model="llava:7b", messages=[{"role": "user", "content": "?", "images": [PNG]}], stream=True)
    )
    assert "".join(p.message.content for p in parts) == "I see a cat" and parts[-1].done
    gen = client.generate(model="llava:7b", prompt="describe", images=[PNG])
    assert gen.response == "I see a cat"
    assert [r["path"] for r in vision.requests] == ["/api/chat", "/api/chat", "/api/generate"]
    assert vision.requests[0]["body"]["messages"][0]["images"] == [PNG]
    assert vllm.requests == []


def test_images_to_text_model_on_vllm_go_to_vision(
    client: ollama.Client, vision: OllamaStandin, vllm: VLLMStandin
) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="tiny", messages=[{"role": "user", "content": "?", "images": [PNG]}])
    # Ollama Vision does not have "tiny": its own 404 reaches the client unchanged.
    assert info.value.status_code == 404
    assert vision.requests[-1]["path"] == "/api/chat"
    assert vllm.requests == []


def test_passthrough_is_incremental_and_cancels(gateway: str, vision: OllamaStandin) -> None:
    vision.delay = 0.3
    with (
        httpx.Client(base_url=gateway, timeout=10) as http,
        http.stream(
            "POST",
            "/api/chat",
            json={"model": "llava:7b", "messages": [{"role": "user", "content": "x", "images": [PNG]}]},
        ) as resp,
    ):
        assert resp.headers["content-type"] == "application/x-ndjson"
        first = next(resp.iter_lines())
        assert '"I"' in first
    deadline = time.monotonic() + 3
    while vision.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vision.cancelled == 1


def test_show_vllm_model(client: ollama.Client) -> None:
    shown = client.show("tiny")
    info = shown.modelinfo
    arch = info["general.architecture"]
    assert info[f"{arch}.context_length"] == 2048
    assert info["general.context_length"] == 2048
    assert info["general.basename"] == "tiny"
    assert "completion" in shown.capabilities and "tools" in shown.capabilities
    assert shown.details.family == arch
    assert shown.modified_at is not None
    assert "num_ctx" in shown.parameters


def test_show_accepts_name_and_forwards_vision_models(http: httpx.Client, vision: OllamaStandin) -> None:
    r = http.post("/api/show", json={"name": "Qwen/Qwen2.5-7B-Instruct"})
    assert r.status_code == 200 and r.json()["model_info"]["qwen2.context_length"] == 2048
    r = http.post("/api/show", json={"model": "nomic-embed-text"})
    assert r.json()["capabilities"] == ["embedding"]
    assert vision.requests[-1]["path"] == "/api/show"
    r = http.post("/api/show", json={"model": "nope"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    r = http.post("/api/show", json={})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}


def test_ps_merges(client: ollama.Client) -> None:
    running = client.ps()
    names = [m.model for m in running.models]
    assert "tiny:latest" in names and "llava:7b" in names
    tiny = next(m for m in running.models if m.model == "tiny:latest")
    assert tiny.context_length == 2048 and tiny.expires_at.year > 2100
    alias = next(m for m in running.models if m.model == "llama2:7b")  # MODEL_ALIASES llama2:7b=tiny
    assert alias.context_length == 2048


def test_pull_served_model_succeeds_locally(client: ollama.Client, http: httpx.Client, vision: OllamaStandin) -> None:
    assert client.pull("tiny").status == "success"
    statuses = [p.status for p in client.pull("tiny:latest", stream=True)]
    assert statuses[-1] == "success"
    r = http.post("/api/pull", json={"name": "tiny"})
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.text.splitlines()[-1] == '{"status":"success"}'
    assert vision.requests == []


def test_pull_and_delete_vision_models(client: ollama.Client, vision: OllamaStandin) -> None:
    statuses = [p.status for p in client.pull("moondream", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    deadline = time.monotonic() + 3  # the gateway reuses Ollama Vision's list for ADAPTER_MODELS_TTL (0.5 s)
    while "moondream:latest" not in [m.model for m in client.list().models]:
        assert time.monotonic() < deadline, "the pulled model never appeared in the list"
        time.sleep(0.1)
    assert client.delete("llava:7b").status == "success"
    assert vision.requests[-1]["path"] == "/api/delete"
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("not-there")
    assert info.value.status_code == 404


def test_management_of_vllm_models_refused(client: ollama.Client, http: httpx.Client, vision: OllamaStandin) -> None:
    for call in (
        lambda: client.delete("tiny"),
        lambda: client.copy("tiny", "tiny2"),
        lambda: client.create("x", from_="tiny"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 400
        assert "vLLM deployment" in info.value.error
    assert client.copy("llava:7b", "llava-copy").status == "success"
    assert vision.requests[-1]["path"] == "/api/copy"


def test_blobs_forwarded(http: httpx.Client, vision: OllamaStandin) -> None:
    digest = "sha256:" + "0" * 64
    assert http.head(f"/api/blobs/{digest}").status_code == 404
    r = http.post(f"/api/blobs/{digest}", content=b"x" * 100_000)
    assert r.status_code == 201
    assert vision.requests[-1]["body"] == {"size": 100_000}


def test_openai_sdk_on_v1(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused")
    resp = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "Hello from tiny!"
    chunks = list(
        sdk.chat.completions.create(model="tiny:latest", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from tiny!"
    assert vllm.requests[-1]["body"]["model"] == "tiny"
    emb = sdk.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert len(emb.data) == 2
    assert vision.requests[-1]["path"] == "/v1/embeddings"
    models = {m.id for m in sdk.models.list()}
    assert {"tiny", "llava:7b"} <= models
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_v1_errors_are_openai_shaped(http: httpx.Client, vllm: VLLMStandin) -> None:
    r = http.post("/v1/chat/completions", content=b"{bad")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    vllm.max_model_len = 5
    try:
        r = http.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "a b c d e f"}]}
        )
    finally:
        vllm.max_model_len = 2048
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]


IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_vision_down_text_keeps_working(vllm_server, down_url: str) -> None:  # type: ignore[no-untyped-def]
    with running_gateway(make_settings(vllm_server[1].url, down_url)) as url:
        c = ollama.Client(host=url)
        assert c.chat(model="tiny", messages=[{"role": "user", "content": "x"}]).message.content == "Hello from tiny!"
        assert sorted(m.model for m in c.list().models) == ["Qwen/Qwen2.5-7B-Instruct:latest", "tiny:latest"]
        with pytest.raises(ollama.ResponseError) as info:
            c.embed(model="nomic-embed-text", input="x")
        assert info.value.status_code == 502 and "Ollama Vision" in info.value.error
        # Ollama Vision never answered: it is taken as not deployed, and an unknown model is not found.
        with pytest.raises(ollama.ResponseError) as info:
            c.chat(model="llava:7b", messages=[{"role": "user", "content": "What?", "images": [IMAGE]}])
        assert info.value.status_code == 404


def test_vision_gone_after_answering_is_a_502_not_not_found(vllm_server) -> None:  # type: ignore[no-untyped-def]
    """A model only Ollama Vision could have, while Ollama Vision (which answered before) is down:
    it may well have it, so the answer names Ollama Vision rather than "not found"."""
    standin = OllamaStandin()
    vision = ServerThread(standin.app()).start()
    settings = make_settings(vllm_server[1].url, vision.url)
    try:
        with running_gateway(settings) as url:
            c = ollama.Client(host=url)
            assert "llava:7b" in [m.model for m in c.list().models]
            vision.stop()
            time.sleep(1.2)  # past the TTL and the miss path's one second: the list is asked again
            with pytest.raises(ollama.ResponseError) as info:
                c.chat(model="bakllava", messages=[{"role": "user", "content": "What?", "images": [IMAGE]}])
            assert info.value.status_code == 502
            assert info.value.error.startswith("Ollama Vision is unavailable")
    finally:
        vision.stop()
        assert "Ollama Vision" in info.value.error


CATALOG = """
models:
  - name: chat
    aliases: [assistant, "llama3:8b"]
    backend: vllm
    upstream: tiny
    context_length: 1024
    capabilities: [completion, tools, thinking]
  - name: coder
    upstream: tiny
    fim: qwen2.5-coder
  - name: eye
    backend: ollama
    upstream: llava:7b
  - name: llava:7b
    backend: vllm
    upstream: Qwen/Qwen2.5-7B-Instruct
"""


def test_catalog_routing(tmp_path: Path, vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG)
    vllm, vision = vllm_server[0], vision_server[0]
    vllm.reset()
    vision.reset()
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_models_file=path)
    with running_gateway(settings) as url:
        c = ollama.Client(host=url)
        names = [m.model for m in c.list().models]
        assert {"chat:latest", "assistant:latest", "llama3:8b", "coder:latest", "eye:latest"} <= set(names)
        assert c.chat(model="assistant", messages=[{"role": "user", "content": "x"}]).model == "assistant"
        assert vllm.requests[-1]["body"]["model"] == "tiny"
        shown = c.show("chat:latest")
        assert shown.modelinfo["general.context_length"] == 1024
        assert shown.capabilities == ["completion", "tools", "thinking"]
        # The catalog resolves a clash: llava:7b is the vLLM model here.
        c.chat(model="llava:7b", messages=[{"role": "user", "content": "x"}])
        assert vllm.requests[-1]["body"]["model"] == "Qwen/Qwen2.5-7B-Instruct"
        # An ollama-backed entry goes to Ollama Vision under its upstream name.
        assert c.chat(model="eye", messages=[{"role": "user", "content": "x"}]).message.content == "I see a cat"
        assert vision.requests[-1]["body"]["model"] == "llava:7b"
        # FIM through the catalog's template.
        vllm.script = Script(tokens=["middle"])
        c.generate(model="coder", prompt="def f(", suffix="    return x", raw=True)
        assert vllm.requests[-1]["path"] == "/v1/completions"
        assert vllm.requests[-1]["body"]["prompt"] == "<|fim_prefix|>def f(<|fim_suffix|>    return x<|fim_middle|>"
        assert ".Suffix" in c.show("coder").template and "insert" in c.show("coder").capabilities


def test_invalid_catalog_names_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - name: a\n  - name: b\n    backend: gpu\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert "model 'b', field 'backend'" in str(info.value) and "'gpu'" in str(info.value)
    path.write_text("models:\n  - name: a\n  - name: b\n    aliases: [A]\n")
    with pytest.raises(CatalogError, match="already used"):
        load_catalog(path)


def test_invalid_catalog_stops_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - name: a\n    colour: red\n")
    proc = subprocess.run(
        [sys.executable, "-m", "adapter", "--port", "1", "--models-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "colour" in proc.stderr and "Traceback" not in proc.stderr
