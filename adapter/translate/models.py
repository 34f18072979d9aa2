"""Model descriptions in Ollama's shapes (/api/tags, /api/show, /api/ps), built from what vLLM
reports (`/v1/models`: id, max_model_len) and what the model id reveals. Pure."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# Substring of the lower-cased model id -> Ollama family / GGUF architecture name. First match wins.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("qwen3", "qwen3"),
    ("qwq", "qwen2"),
    ("qwen", "qwen2"),
    ("codellama", "llama"),
    ("llama", "llama"),
    ("mixtral", "llama"),
    ("mistral", "llama"),
    ("gemma3", "gemma3"),
    ("gemma-3", "gemma3"),
    ("gemma2", "gemma2"),
    ("gemma-2", "gemma2"),
    ("gemma", "gemma"),
    ("phi", "phi3"),
    ("deepseek", "deepseek2"),
    ("gpt-oss", "gptoss"),
    ("granite", "granite"),
    ("starcoder", "starcoder2"),
    ("falcon", "falcon"),
    ("command-r", "command-r"),
)

# Substring -> quantization level; bytes per parameter for the size estimate.
QUANTIZATIONS: tuple[tuple[str, str, float], ...] = (
    ("awq", "AWQ", 0.5),
    ("gptq", "GPTQ", 0.5),
    ("int4", "INT4", 0.5),
    ("w4a16", "INT4", 0.5),
    ("4bit", "Q4", 0.5),
    ("fp8", "FP8", 1.0),
    ("int8", "INT8", 1.0),
    ("w8a8", "INT8", 1.0),
    ("8bit", "Q8_0", 1.0),
    ("bf16", "BF16", 2.0),
    ("fp16", "F16", 2.0),
)

THINKING_HINTS = ("qwen3", "qwq", "deepseek-r1", "r1-distill", "gpt-oss", "thinking", "magistral")

_PARAMS = re.compile(r"(?<![a-z0-9.])((?:\d+x)?\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)


def basename(model_id: str) -> str:
    return model_id.rstrip("/").rsplit("/", 1)[-1].split(":", 1)[0]


def family_of(model_id: str) -> str:
    lowered = model_id.lower()
    for needle, family in FAMILIES:
        if needle in lowered:
            return family
    # Unknown architecture: a stable, GGUF-like key so `<arch>.context_length` still lines up.
    return re.sub(r"[^a-z0-9]+", "", basename(model_id).lower()) or "unknown"


def parameter_size_of(model_id: str) -> str:
    match = _PARAMS.search(basename(model_id))
    return f"{match.group(1)}{match.group(2).upper()}" if match else ""


def _parameter_count(parameter_size: str) -> int:
    if not parameter_size:
        return 0
    number, unit = parameter_size[:-1], parameter_size[-1]
    factor = 1e9 if unit == "B" else 1e6
    if "x" in number:
        experts, each = number.split("x", 1)
        return int(int(experts) * float(each) * factor)
    return int(float(number) * factor)


def quantization_of(model_id: str) -> tuple[str, float]:
    lowered = model_id.lower()
    for needle, level, width in QUANTIZATIONS:
        if needle in lowered:
            return level, width
    return "unknown", 2.0  # vLLM serves safetensors checkpoints at 16 bits unless told otherwise


def digest_of(backend: str, upstream_id: str) -> str:
    """A stable 64-hex digest (Ollama's shape, no `sha256:` prefix) for a model we do not hold as a blob."""
    return hashlib.sha256(f"{backend}:{upstream_id}".encode()).hexdigest()


def tag_name(name: str) -> str:
    """Ollama lists names with their tag: `tiny` -> `tiny:latest`."""
    return name if ":" in basename_with_tag(name) else f"{name}:latest"


def basename_with_tag(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def model_details(upstream_id: str, family: str | None = None) -> dict[str, Any]:
    family = family or family_of(upstream_id)
    quantization, _ = quantization_of(upstream_id)
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size_of(upstream_id),
        "quantization_level": quantization,
    }


def estimated_size(upstream_id: str) -> int:
    _, width = quantization_of(upstream_id)
    return int(_parameter_count(parameter_size_of(upstream_id)) * width)


def tags_entry(name: str, upstream_id: str, modified_at: str, family: str | None = None) -> dict[str, Any]:
    """One /api/tags item for a vLLM-served model."""
    listed = tag_name(name)
    return {
        "name": listed,
        "model": listed,
        "modified_at": modified_at,
        "size": estimated_size(upstream_id),
        "digest": digest_of("vllm", upstream_id),
        "details": model_details(upstream_id, family),
    }


def default_capabilities(upstream_id: str) -> list[str]:
    capabilities = ["completion", "tools"]
    lowered = upstream_id.lower()
    if any(hint in lowered for hint in THINKING_HINTS):
        capabilities.append("thinking")
    return capabilities


def parameters_text(context_length: int | None, stop: list[str] | None = None) -> str:
    """Ollama's `parameters` text: `%-30s %#v` lines (Continue parses num_ctx and stop from it)."""
    lines = []
    if context_length:
        lines.append(f"{'num_ctx':<30} {context_length}")
    for item in stop or ():
        lines.append(f"{'stop':<30} {json.dumps(item)}")  # Go's %#v quotes and escapes like JSON
    return "\n".join(lines)


def show_response(
    upstream_id: str,
    modified_at: str,
    *,
    context_length: int | None,
    capabilities: list[str],
    family: str | None = None,
    template: str | None = None,
) -> dict[str, Any]:
    """/api/show for a vLLM-served model. `model_info` is always present (clients crash on null)."""
    details = model_details(upstream_id, family)
    arch = details["family"]
    model_info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": basename(upstream_id),
        "general.name": upstream_id,
    }
    count = _parameter_count(details["parameter_size"])
    if count:
        model_info["general.parameter_count"] = count
    if context_length:
        model_info["general.context_length"] = context_length
        model_info[f"{arch}.context_length"] = context_length
    body: dict[str, Any] = {
        "modelfile": f"# Served by vLLM through vllm-ollama-adapter\nFROM {upstream_id}\n",
        "parameters": parameters_text(context_length),
        "template": template or "{{ .Prompt }}",
        "details": details,
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": modified_at,
    }
    if not body["parameters"]:
        del body["parameters"]
    return body


def ps_entry(
    name: str, upstream_id: str, expires_at: str, context_length: int | None, family: str | None = None
) -> dict[str, Any]:
    """/api/ps item: vLLM keeps its model loaded for as long as it runs."""
    listed = tag_name(name)
    size = estimated_size(upstream_id)
    return {
        "name": listed,
        "model": listed,
        "size": size,
        "digest": digest_of("vllm", upstream_id),
        "details": model_details(upstream_id, family),
        "expires_at": expires_at,
        "size_vram": size,
        "context_length": context_length or 0,
    }
