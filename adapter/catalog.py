"""The optional model catalog (ADAPTER_MODELS_FILE): the vLLM backends, which names exist, where each
is served, canaries and fallbacks.

Validated at start (and on every reload); a wrong entry stops the gateway (or, on a reload, is refused
while the old catalog keeps serving) with a message naming the entry and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapter.yamlfile import YamlFileError, read_yaml

Capability = Literal["completion", "tools", "insert", "vision", "embedding", "thinking"]

# Fill-in-the-middle prompt formats of the coder families editors use (prefix, suffix, middle).
FIM_TEMPLATES: dict[str, tuple[str, str, str]] = {
    "qwen2.5-coder": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "codellama": ("<PRE> ", " <SUF>", " <MID>"),
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "deepseek-coder": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
}


# The backends every gateway has: VLLM_BASE_URL's servers, and Ollama Vision.
DEFAULT_BACKEND = "vllm"
OLLAMA_BACKEND = "ollama"


class CatalogError(ValueError):
    pass


def check_http_url(value: str, what: str, *, openai_base: bool = True) -> str:
    """An http(s) URL with a host and a valid port, without a trailing slash; an OpenAI base URL
    (`openai_base`) also without `/v1`, which people paste and the gateway adds itself."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL such as http://localhost:8000, got {value!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValueError(f"{what} has an invalid port: {value!r}") from exc
    value = value.rstrip("/")
    return value.removesuffix("/v1") if openai_base else value


class BackendSpec(BaseModel):
    """A vLLM backend: the servers (replicas) of one model group, or a cluster router's URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: tuple[str, ...] = Field(min_length=1)
    api_key: str | None = None  # sent as `Authorization: Bearer` (vLLM's --api-key)
    max_inflight: int | None = Field(None, ge=1)  # per replica; default ADAPTER_MAX_INFLIGHT

    @field_validator("replicas")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        urls = tuple(check_http_url(url, "a replica") for url in value)
        if len(set(urls)) != len(urls):
            raise ValueError("the same replica URL is listed twice")
        return urls


class Canary(BaseModel):
    """Send `share` percent of a model's requests to another backend (a roll-forward's canary)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    share: float = Field(ge=0, le=100)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    # "vllm" (VLLM_BASE_URL's servers), "ollama" (Ollama Vision), or a name from `backends`.
    backend: str = DEFAULT_BACKEND
    upstream: str | None = None  # the backend's own model id; defaults to `name`
    context_length: int | None = Field(None, gt=0)
    capabilities: tuple[Capability, ...] | None = None
    fallback: str | None = None  # an Ollama Vision model for chat mode when vLLM is unhealthy
    fim: str | None = None
    family: str | None = None
    request_defaults: dict[str, Any] = Field(default_factory=dict)
    canary: Canary | None = None
    # Mark every tool `strict` for vLLM, so arguments follow the tool's schema. Ollama's API (and its
    # clients' tool types) cannot say `strict`; without it vLLM constrains only the call's envelope.
    strict_tools: bool = False

    @field_validator("fim")
    @classmethod
    def _known_fim(cls, value: str | None) -> str | None:
        if value is not None and value not in FIM_TEMPLATES:
            raise ValueError(f"unknown FIM template {value!r}; known: {', '.join(sorted(FIM_TEMPLATES))}")
        return value

    @model_validator(mode="after")
    def _vllm_only(self) -> ModelEntry:
        if self.backend == OLLAMA_BACKEND:
            if self.fallback:
                raise ValueError("fallback is only meaningful for a vLLM backend")
            if self.canary:
                raise ValueError("canary is only meaningful for a vLLM backend")
        return self

    @property
    def upstream_id(self) -> str:
        return self.upstream or self.name


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: dict[str, BackendSpec] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(default_factory=list)
    # Discover models the file does not list (from vLLM's /v1/models and Ollama Vision's /api/tags).
    discover: bool = True

    @field_validator("backends")
    @classmethod
    def _reserved(cls, value: dict[str, BackendSpec]) -> dict[str, BackendSpec]:
        for name in value:
            if name in (DEFAULT_BACKEND, OLLAMA_BACKEND) or not name.strip():
                raise ValueError(f"backend name {name!r} is reserved (vllm is VLLM_BASE_URL, ollama is Ollama Vision)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        known = (DEFAULT_BACKEND, OLLAMA_BACKEND, *self.backends)
        seen: dict[str, str] = {}
        for entry in self.models:
            for name in (entry.name, *entry.aliases):
                key = normalize_name(name)
                if key in seen:
                    raise ValueError(f"name {name!r} of model {entry.name!r} is already used by model {seen[key]!r}")
                seen[key] = entry.name
            if entry.backend not in known:
                raise ValueError(
                    f"model {entry.name!r}, field 'backend': unknown backend {entry.backend!r} "
                    f"(known: {', '.join(known)})"
                )
            if entry.canary is not None:
                if entry.canary.backend not in known or entry.canary.backend == OLLAMA_BACKEND:
                    raise ValueError(
                        f"model {entry.name!r}, field 'canary.backend': unknown vLLM backend {entry.canary.backend!r}"
                    )
                if entry.canary.backend == entry.backend:
                    raise ValueError(f"model {entry.name!r}, field 'canary.backend': the model's own backend")
        return self


def normalize_name(name: str) -> str:
    """Ollama's lookup key: case-insensitive, `:latest` implied."""
    name = name.strip().lower()
    return name.removesuffix(":latest")


def load_catalog(path: Path) -> Catalog:
    try:
        raw = read_yaml(path, f"ADAPTER_MODELS_FILE {path}")
    except YamlFileError as exc:
        raise CatalogError(str(exc)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CatalogError(f"ADAPTER_MODELS_FILE {path}: the top level must be a mapping with a `models:` list")
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(f"ADAPTER_MODELS_FILE {path}: {_describe(exc, raw)}") from None


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    problems = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        where = ".".join(str(p) for p in loc) or "catalog"
        if len(loc) >= 2 and loc[0] == "backends":
            where = f"backend {loc[1]!r}, field {'.'.join(str(p) for p in loc[2:]) or 'entry'!r}"
        elif len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            models = raw.get("models") or []
            entry = models[loc[1]] if loc[1] < len(models) else {}
            label = entry.get("name") if isinstance(entry, dict) else None
            field = ".".join(str(p) for p in loc[2:]) or "entry"
            where = f"model #{loc[1] + 1}" + (f" ({label!r})" if label else "") + f", field {field!r}"
        message = str(err.get("msg")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if loc else message)
    return "; ".join(problems)
