"""Shared bits of the client matrix: a real image, the tool and schema every client uses, and
helpers to read what reached the stand-in upstreams. The fixtures themselves (`gateway`, `vllm`,
`vision`) come from tests/conftest.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import BaseModel

from tests.standins.ollama import OllamaStandin
from tests.standins.vllm import Script, VLLMStandin

# A real 1x1 PNG: the gateway (and Ollama) may sniff the bytes, so no placeholder strings.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
PNG = base64.b64decode(PNG_B64)

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


# What vLLM is scripted to produce in the scenarios below (fresh objects: tests may tweak them).
def weather_call() -> Script:
    return Script(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"}'}], tokens=[])


def person_json() -> Script:
    return Script(tokens=['{"name": "Ann", ', '"age": 3}'])


def reasoning() -> Script:
    return Script(reasoning=["Let me", " think"], tokens=["Forty", "-two"])


class Person(BaseModel):
    """A person."""

    name: str
    age: int


def last_vllm(vllm: VLLMStandin, path: str = "/v1/chat/completions") -> dict[str, Any]:
    """The body of the last request that reached vLLM on `path` (fails clearly if none did)."""
    hits = [r for r in vllm.requests if r["path"] == path]
    assert hits, f"nothing reached vLLM {path}; it saw {[r['path'] for r in vllm.requests]}"
    return hits[-1]["body"]


def last_vision(vision: OllamaStandin, path: str) -> dict[str, Any]:
    """The body of the last request that reached Ollama Vision on `path`."""
    hits = [r for r in vision.requests if r["path"] == path]
    assert hits, f"nothing reached Ollama Vision {path}; it saw {[r['path'] for r in vision.requests]}"
    return hits[-1]["body"]


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def assert_schema_forwarded(body: dict[str, Any], required: set[str]) -> None:
    """The upstream was asked for structured output with the client's schema (never `guided_json`)."""
    rf = body.get("response_format") or {}
    assert rf.get("type") == "json_schema", f"expected response_format json_schema, got {rf!r}"
    schema = rf["json_schema"]["schema"]
    assert rf["json_schema"].get("name"), "vLLM requires json_schema.name"
    assert set(schema.get("required") or []) >= required, schema
    assert "guided_json" not in body


def assert_thinking_requested(body: dict[str, Any]) -> None:
    assert (body.get("chat_template_kwargs") or {}).get("enable_thinking") is True, body


@pytest.fixture
def png() -> bytes:
    return PNG
