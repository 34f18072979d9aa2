"""Shared fixtures: stand-in upstreams and the gateway, each a real server on a free loopback port."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ollama
import pytest

from adapter.app import create_app
from adapter.catalog import Catalog
from adapter.config import Settings
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread, dead_port
from tests.standins.vllm import VLLMStandin


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[tuple[VLLMStandin, ServerThread]]:
    standin = VLLMStandin(models=["tiny", "Qwen/Qwen2.5-7B-Instruct"])
    with ServerThread(standin.app()) as server:
        yield standin, server


@pytest.fixture(scope="session")
def vision_server() -> Iterator[tuple[OllamaStandin, ServerThread]]:
    standin = OllamaStandin()
    with ServerThread(standin.app()) as server:
        yield standin, server


@pytest.fixture
def vllm(vllm_server: tuple[VLLMStandin, ServerThread]) -> VLLMStandin:
    standin = vllm_server[0]
    standin.reset()
    return standin


@pytest.fixture
def vision(vision_server: tuple[OllamaStandin, ServerThread]) -> OllamaStandin:
    standin = vision_server[0]
    standin.reset()
    standin.models = {"llava:7b": "llava", "nomic-embed-text:latest": "nomic-bert"}
    return standin


def make_settings(vllm_url: str, vision_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "vllm_base_url": vllm_url,
        "vision_ollama_url": vision_url,
        "adapter_models_ttl": 0.5,
        "adapter_connect_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_gateway(settings: Settings, catalog: Catalog | None = None) -> Iterator[str]:
    """A gateway on a free port for one test (custom settings); yields its base URL."""
    with ServerThread(create_app(settings, catalog)) as server:
        yield server.url


@pytest.fixture(scope="session")
def gateway_url(
    vllm_server: tuple[VLLMStandin, ServerThread], vision_server: tuple[OllamaStandin, ServerThread]
) -> Iterator[str]:
    settings = make_settings(
        vllm_server[1].url, vision_server[1].url, model_aliases="llama2:7b=tiny,llm=Qwen/Qwen2.5-7B-Instruct"
    )
    with running_gateway(settings) as url:
        yield url


@pytest.fixture
def gateway(gateway_url: str, vllm: VLLMStandin, vision: OllamaStandin) -> str:
    """The shared gateway, with both stand-ins reset for this test."""
    return gateway_url


@pytest.fixture
def client(gateway: str) -> ollama.Client:
    return ollama.Client(host=gateway)


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as c:
        yield c


def slots_in_use(metrics_text: str, backend: str = "vllm") -> list[float]:
    """The in-flight and queued gauges of every replica of `backend`, as /metrics shows them."""
    pattern = rf'^ollama_adapter_(?:inflight|queued)_requests\{{backend="{backend}",replica="[^"]*"\}} (\S+)$'
    return [float(v) for v in re.findall(pattern, metrics_text, re.MULTILINE)]


def all_slots_free(metrics_text: str, backend: str = "vllm") -> bool:
    gauges = slots_in_use(metrics_text, backend)
    return bool(gauges) and not any(gauges)


@pytest.fixture
def down_url() -> str:
    """A URL where nothing listens."""
    return f"http://127.0.0.1:{dead_port()}"
