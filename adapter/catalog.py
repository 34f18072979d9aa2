"""The optional model catalog (ADAPTER_MODELS_FILE): which names exist, where each is served.

Validated once at start; a wrong entry stops the gateway with a message naming entry and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Capability = Literal["completion", "tools", "insert", "vision", "embedding", "thinking"]

# Fill-in-the-middle prompt formats of the coder families editors use (prefix, suffix, middle).
FIM_TEMPLATES: dict[str, tuple[str, str, str]] = {
    "qwen2.5-coder": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "codellama": ("<PRE> ", " <SUF>", " <MID>"),
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "deepseek-coder": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
}


class CatalogError(ValueError):
    pass


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    backend: Literal["vllm", "ollama"] = "vllm"
    upstream: str | None = None  # the backend's own model id; defaults to `name`
    context_length: int | None = Field(None, gt=0)
    capabilities: tuple[Capability, ...] | None = None
    fallback: str | None = None  # an Ollama Vision model for chat mode when vLLM is unhealthy
    fim: str | None = None
    family: str | None = None
    request_defaults: dict[str, Any] = Field(default_factory=dict)
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
    def _fallback_only_for_vllm(self) -> ModelEntry:
        if self.fallback and self.backend != "vllm":
            raise ValueError("fallback is only meaningful for backend: vllm")
        return self

    @property
    def upstream_id(self) -> str:
        return self.upstream or self.name


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(default_factory=list)
    # Discover models the file does not list (from vLLM's /v1/models and Ollama Vision's /api/tags).
    discover: bool = True

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        seen: dict[str, str] = {}
        for entry in self.models:
            for name in (entry.name, *entry.aliases):
                key = normalize_name(name)
                if key in seen:
                    raise ValueError(f"name {name!r} of model {entry.name!r} is already used by model {seen[key]!r}")
                seen[key] = entry.name
        return self


def normalize_name(name: str) -> str:
    """Ollama's lookup key: case-insensitive, `:latest` implied."""
    name = name.strip().lower()
    return name.removesuffix(":latest")


def load_catalog(path: Path) -> Catalog:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"ADAPTER_MODELS_FILE {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"ADAPTER_MODELS_FILE {path}: not valid YAML ({exc})") from None
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
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            models = raw.get("models") or []
            entry = models[loc[1]] if loc[1] < len(models) else {}
            label = entry.get("name") if isinstance(entry, dict) else None
            field = ".".join(str(p) for p in loc[2:]) or "entry"
            where = f"model #{loc[1] + 1}" + (f" ({label!r})" if label else "") + f", field {field!r}"
        problems.append(f"{where}: {str(err.get('msg')).removeprefix('Value error, ')}")
    return "; ".join(problems)
