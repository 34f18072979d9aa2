"""The official Ollama JavaScript client (npm `ollama`, pinned in js/package.json), unchanged.

Each test runs `node js/run.mjs <gateway> <scenario>`, which prints what the client returned as
JSON. `npm ci` installs the pinned client into js/node_modules on first use (from the committed
package-lock.json). Without node/npm the tests skip, loudly: the matrix is then incomplete.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import (
    PNG_B64,
    assert_schema_forwarded,
    assert_thinking_requested,
    last_vision,
    last_vllm,
    person_json,
    reasoning,
    weather_call,
)
from tests.standins.ollama import OllamaStandin
from tests.standins.vllm import VLLMStandin

pytestmark = pytest.mark.clients

JS_DIR = Path(__file__).parent / "js"
Runner = Callable[[str], Any]


def _installed_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "ollama" / "package.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text())["version"]


def _pinned_version() -> str:
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    return lock["packages"]["node_modules/ollama"]["version"]


@pytest.fixture(scope="session")
def node_ready() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        reason = f"CLIENT MATRIX INCOMPLETE: {missing} not installed, the official JavaScript client was NOT tested"
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    major = int(
        subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.lstrip("v").split(".")[0]
    )
    assert major >= 18, f"node >= 18 is needed (global fetch); found {major}"
    if _installed_version() != _pinned_version():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed in {JS_DIR}:\n{done.stdout}\n{done.stderr}"
    assert _installed_version() == _pinned_version()
    return node


@pytest.fixture
def js(node_ready: str, gateway: str) -> Runner:
    def run(scenario: str) -> Any:
        done = subprocess.run(
            [node_ready, "run.mjs", gateway, scenario], cwd=JS_DIR, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"run.mjs {scenario} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    return run


def test_js_list_and_show(js: Runner) -> None:
    out = js("list")
    assert {"tiny:latest", "llava:7b", "nomic-embed-text:latest"} <= set(out["models"])
    info = out["show"]["model_info"]
    assert info[f"{info['general.architecture']}.context_length"] == 2048
    assert "tools" in out["show"]["capabilities"]


def test_js_chat(js: Runner, vllm: VLLMStandin) -> None:
    out = js("chat")
    assert out["message"] == {"role": "assistant", "content": "Hello from tiny!"}
    assert out["done"] is True and out["done_reason"] == "stop" and out["eval_count"] == 4
    body = last_vllm(vllm)
    # vLLM is always asked for a stream; the client's non-streamed answer is it folded together.
    assert body["stream"] is True and body["messages"] == [{"role": "user", "content": "Hi"}]


def test_js_generate(js: Runner, vllm: VLLMStandin) -> None:
    out = js("generate")
    assert out["response"] == "Hello from tiny!" and out["done"] is True
    assert last_vllm(vllm)["messages"][-1]["content"] == "Why is the sky blue?"


def test_js_stream(js: Runner, vllm: VLLMStandin) -> None:
    out = js("stream")
    assert "".join(out["chat"]) == "Hello from tiny!" and len(out["chat"]) > 2
    assert out["chat_done"][-1] is True and not any(out["chat_done"][:-1])
    assert out["chat_final"]["done_reason"] == "stop"
    assert "".join(out["generate"]) == "Hello from tiny!" and out["generate_done"][-1] is True


def test_js_tools(js: Runner, vllm: VLLMStandin) -> None:
    vllm.script = weather_call()
    out = js("tools")
    (call,) = out["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    assert [t["function"]["name"] for t in last_vllm(vllm)["tools"]] == ["get_weather"]

    vllm.script = weather_call()
    out = js("tools_stream")
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in out["tool_calls"]] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert out["done"] is True


def test_js_structured_output(js: Runner, vllm: VLLMStandin) -> None:
    vllm.script = person_json()
    assert json.loads(js("structured")["content"]) == {"name": "Ann", "age": 3}
    assert_schema_forwarded(last_vllm(vllm), {"name", "age"})


def test_js_thinking(js: Runner, vllm: VLLMStandin) -> None:
    vllm.script = reasoning()
    assert js("think") == {"thinking": "Let me think", "content": "Forty-two"}
    assert_thinking_requested(last_vllm(vllm))
    vllm.script = reasoning()
    assert js("think_stream") == {"thinking": "Let me think", "content": "Forty-two"}


def test_js_embeddings(js: Runner, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    out = js("embed")
    assert out["embeddings"] == [pytest.approx([0.6, 0.8, 0.0])] * 2
    assert out["embedding"] == pytest.approx([0.1, 0.2, 0.3])
    assert last_vision(vision, "/api/embed")["input"] == ["first", "second"]
    assert vllm.requests == []


def test_js_vision(js: Runner, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    assert js("vision") == {"content": "I see a cat", "done": True}
    assert last_vision(vision, "/api/chat")["messages"][0]["images"] == [PNG_B64]
    assert vllm.requests == []


def test_js_missing_model_is_response_error(js: Runner) -> None:
    out = js("missing_model")
    assert out == {
        "raised": True,
        "name": "ResponseError",
        "error": 'model "nope" not found, try pulling it first',
        "status_code": 404,
    }
