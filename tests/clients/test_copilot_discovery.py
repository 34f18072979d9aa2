"""The sequence VS Code Copilot (BYOK "Ollama" provider) uses to find and use an Ollama server.

Replayed with httpx, request for request, as `OllamaLMProvider` in microsoft/vscode-copilot-chat
(src/extension/byok/vscode-node/ollamaProvider.ts) sends it:

1. `GET /api/version`: `version` compared part by part (parseInt) against 0.6.4; lower is refused.
2. `GET /api/tags`: every `models[].model` is then described, one by one.
3. `POST /api/show {"model": <model>}` for EACH listed model: `capabilities.includes(...)` is called
   unguarded (a missing list drops the model; older releases lost every model), `tools` enables agent mode,
   `vision` image input; the context window is `model_info[<general.architecture>.context_length]`
   (32768 when absent), the display name `model_info["general.basename"]`.
4. Chat: `POST <base>/v1/chat/completions` (`createOpenAIEndPoint`) with the `/api/tags` name, streaming,
   with tools and `stream_options.include_usage`, and an empty bearer token (fetch trims
   "Bearer " to "Bearer").
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.clients.conftest import WEATHER_TOOL, last_vllm, weather_call
from tests.standins.vllm import VLLMStandin

MINIMUM_OLLAMA_VERSION = "0.6.4"


def version_supported(current: str, minimum: str = MINIMUM_OLLAMA_VERSION) -> bool:
    """Copilot's `_isVersionSupported`: numeric compare, missing parts are 0."""

    def num(part: str) -> int:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        return int(digits) if digits else 0  # parseInt("3-rc1") == 3; NaN || 0 == 0

    cur, low = [num(p) for p in current.split(".")], [num(p) for p in minimum.split(".")]
    for i in range(max(len(cur), len(low))):
        c, m = (cur[i] if i < len(cur) else 0), (low[i] if i < len(low) else 0)
        if c != m:
            return c > m
    return True


def model_capabilities(model_id: str, show: dict[str, Any]) -> dict[str, Any]:
    """Copilot's `_getOllamaModelInfo`."""
    info = show.get("model_info") or {}
    context_window = info.get(f"{info.get('general.architecture')}.context_length") or 32768
    output_tokens = context_window // 2 if context_window < 4096 else 4096
    return {
        "name": info.get("general.basename") or show.get("remote_model") or model_id,
        "max_output_tokens": output_tokens,
        "max_input_tokens": context_window - output_tokens,
        "vision": "vision" in show["capabilities"],
        "tool_calling": "tools" in show["capabilities"],
    }


@pytest.fixture
def copilot(gateway: str) -> httpx.Client:
    # Copilot's fetcher sends JSON bodies with Content-Type set; the bearer is empty for Ollama.
    with httpx.Client(base_url=gateway, timeout=10, headers={"Authorization": "Bearer"}) as c:
        yield c  # type: ignore[misc]


def test_version_is_accepted(copilot: httpx.Client) -> None:
    assert version_supported("0.6.4") and version_supported("0.12.3") and not version_supported("0.6.3")
    r = copilot.get("/api/version")
    assert r.status_code == 200
    assert version_supported(r.json()["version"]), r.json()


def test_every_listed_model_can_be_described(copilot: httpx.Client) -> None:
    models = [m["model"] for m in copilot.get("/api/tags").json()["models"]]
    assert {"tiny:latest", "llava:7b", "nomic-embed-text:latest"} <= set(models)
    described = {}
    for model in models:
        r = copilot.post("/api/show", json={"model": model})
        assert r.status_code == 200, f"/api/show {model}: {r.status_code} {r.text}"
        show = r.json()
        assert isinstance(show.get("capabilities"), list), f"/api/show {model} has no capabilities list: {show}"
        described[model] = model_capabilities(model, show)
    tiny = described["tiny:latest"]
    assert tiny["tool_calling"] is True  # agent mode
    assert (
        tiny["max_input_tokens"] + tiny["max_output_tokens"] == 2048
    )  # from <arch>.context_length, not the 32768 default
    assert tiny["name"] == "tiny"
    qwen = described["Qwen/Qwen2.5-7B-Instruct:latest"]
    assert qwen["tool_calling"] is True and qwen["max_input_tokens"] + qwen["max_output_tokens"] == 2048
    assert described["llava:7b"]["vision"] is True
    assert described["llava:7b"]["max_input_tokens"] + described["llava:7b"]["max_output_tokens"] == 4096


def test_full_discovery_then_streaming_tool_chat(copilot: httpx.Client, vllm: VLLMStandin) -> None:
    assert version_supported(copilot.get("/api/version").json()["version"])
    models = [m["model"] for m in copilot.get("/api/tags").json()["models"]]
    chosen = "tiny:latest"
    assert chosen in models
    caps = model_capabilities(chosen, copilot.post("/api/show", json={"model": chosen}).json())
    assert caps["tool_calling"]

    vllm.script = weather_call()
    request = {
        "model": chosen,
        "messages": [
            {"role": "system", "content": "You are an expert AI programming assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
        ],
        "stream": True,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "temperature": 0.1,
        "top_p": 1,
        "max_tokens": caps["max_output_tokens"],
        "n": 1,
        "stream_options": {"include_usage": True},
    }
    events: list[dict[str, Any]] = []
    done = False
    with copilot.stream("POST", "/v1/chat/completions", json=request) as r:
        assert r.status_code == 200, r.read().decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
                continue
            events.append(json.loads(data))
    assert done, "the SSE stream must end with data: [DONE]"

    name, args, finish = "", "", None
    for event in events:
        for choice in event["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                name += call.get("function", {}).get("name") or ""
                args += call.get("function", {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}
    assert finish == "tool_calls"
    assert any(e.get("usage") for e in events), "include_usage was asked: a usage chunk must come"

    sent = last_vllm(vllm)
    assert sent["model"] == "tiny"  # the /api/tags name, resolved to what vLLM serves
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == caps["max_output_tokens"]
