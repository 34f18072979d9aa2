"""Settings: every environment variable the gateway reads, validated once at start.

Field names are the environment variable names in lower case (pydantic-settings matches
them case-insensitively), so `vllm_base_url` is `VLLM_BASE_URL`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapter.catalog import check_http_url


def parse_aliases(raw: str | dict[str, str] | None) -> dict[str, str]:
    """`a=b,c=d` -> {"a": "b", "c": "d"}; what existing services send -> what vLLM serves."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return {str(k).strip(): str(v).strip() for k, v in raw.items()}
    aliases: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"MODEL_ALIASES entry {item!r} is not of the form name=served-model")
        aliases[name.strip()] = target.strip()
    return aliases


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Where the gateway listens. Loopback unless told otherwise: a local LLM must not be open to the LAN.
    adapter_host: str = "127.0.0.1"
    adapter_port: int = Field(11434, ge=1, le=65535)

    # Upstreams. VLLM_BASE_URL may list several servers, comma-separated.
    vllm_base_url: str = "http://localhost:8000"
    vllm_api_key: SecretStr | None = None
    vision_ollama_url: str = "http://localhost:11435"

    # What /api/version reports. VS Code Copilot refuses anything below 0.6.4.
    adapter_ollama_version: str = "0.33.0"

    # `name=served-model,...`: names existing services send -> vLLM served model names.
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Optional YAML model catalog (see README "Model catalog").
    adapter_models_file: Path | None = None
    # How long the discovered model lists are reused before asking the backends again.
    adapter_models_ttl: float = Field(10.0, ge=0)

    # Timeouts in seconds (0 disables the one it names).
    adapter_connect_timeout: float = Field(5.0, ge=0)
    adapter_first_token_timeout: float = Field(30.0, ge=0)
    adapter_total_timeout: float = Field(120.0, ge=0)

    # Operations (issue: health, fallback, back-pressure, security).
    adapter_mode: Literal["chat", "ingestion"] = "chat"
    adapter_health_interval: float = Field(5.0, gt=0)
    adapter_fallback_after: float = Field(10.0, ge=0)
    adapter_max_inflight: int = Field(256, ge=1)
    adapter_max_queue: int = Field(512, ge=0)
    adapter_queue_timeout: float = Field(30.0, ge=0)
    adapter_api_key: SecretStr | None = None
    # Tenants and the digests of their keys (README "Tenants"); ADAPTER_API_KEY joins them as "default".
    adapter_api_keys_file: Path | None = None
    adapter_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    adapter_max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    adapter_log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Worker processes on one port; limits (ADAPTER_MAX_INFLIGHT, ADAPTER_MAX_QUEUE) are divided between them.
    adapter_workers: int = Field(1, ge=1, le=64)
    adapter_access_log: bool = True

    # Tracing: "otlp" sends spans to OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT over HTTP/protobuf.
    llm_trace_exporter: Literal["none", "otlp"] = "none"
    # Read by the OpenTelemetry SDK itself; checked here because only HTTP/protobuf is installed.
    otel_exporter_otlp_protocol: str | None = None
    otel_exporter_otlp_traces_protocol: str | None = None

    @field_validator("llm_trace_exporter", mode="before")
    @classmethod
    def _exporter(cls, value: object) -> object:
        return "none" if value in (None, "") else value.lower() if isinstance(value, str) else value

    @field_validator("otel_exporter_otlp_protocol", "otel_exporter_otlp_traces_protocol")
    @classmethod
    def _otlp_protocol(cls, value: str | None) -> str | None:
        if value not in (None, "", "http/protobuf"):
            raise ValueError(f"{value!r}: the gateway exports OTLP over HTTP only; use http/protobuf")
        return value

    @field_validator("vllm_base_url")
    @classmethod
    def _vllm_url(cls, value: str) -> str:
        urls = [check_http_url(url, "VLLM_BASE_URL") for url in value.split(",") if url.strip()]
        if not urls:
            raise ValueError("VLLM_BASE_URL names no server; give an http(s) URL such as http://localhost:8000")
        if len(set(urls)) != len(urls):
            raise ValueError("VLLM_BASE_URL lists the same server twice")
        return ",".join(urls)

    @field_validator("vision_ollama_url")
    @classmethod
    def _vision_url(cls, value: str) -> str:
        return check_http_url(value, "VISION_OLLAMA_URL", openai_base=False)

    @property
    def vllm_base_urls(self) -> list[str]:
        """VLLM_BASE_URL's servers: each is asked which models it serves (several listing one model
        are its replicas)."""
        return self.vllm_base_url.split(",")

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: str | dict[str, str] | None) -> dict[str, str]:
        return parse_aliases(value)

    @field_validator("adapter_origins", mode="before")
    @classmethod
    def _origins(cls, value: str | list[str] | None) -> list[str]:
        if value is None or value == "":
            return []
        if isinstance(value, list):
            return [str(v).strip() for v in value if str(v).strip()]
        return [v.strip() for v in value.split(",") if v.strip()]

    @field_validator("adapter_log_level", mode="before")
    @classmethod
    def _level(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value

    @field_validator("vllm_api_key", "adapter_api_key", "adapter_models_file", "adapter_api_keys_file", mode="before")
    @classmethod
    def _empty_secret(cls, value: object) -> object:
        return None if value == "" else value


def describe_validation_error(exc: Exception) -> str:
    """One line per bad setting, naming the environment variable: no traceback at start-up."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{field.upper()}: {msg}")
    return "; ".join(lines)
