"""Model descriptions in Ollama's shapes (/api/tags, /api/show, /api/ps), built from what vLLM
reports (`/v1/models`: id, max_model_len) and what the model id reveals. Pure."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.catalog import normalize_name

# Substring of the lower-cased model id -> Ollama family / GGUF architecture name. First match wins.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("qwen3", "qwen3"),
    ("qwq", "qwen2"),
    ("qwen", "qwen2"),
    ("codellama", "llama"),
    ("llama", "llama"),
    ("smollm", "llama"),  # SmolLM2 is a LlamaForCausalLM
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


@dataclass(frozen=True, slots=True)
class ListedName:
    """A name a client can use for a vLLM model, as /api/tags, /api/ps and /v1/models list it."""

    key: str  # the name's lookup key (normalize_name)
    name: str
    upstream_id: str
    family: str | None
    context_length: int | None
    capabilities: tuple[str, ...]
    backend: str = "vllm"  # the vLLM backend that serves it


def local_rfc3339(epoch: float) -> str:
    """Ollama's modified_at and expires_at: local time with its offset."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat()


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


def model_details(upstream_id: str, family: str | None = None, context_length: int | None = None) -> dict[str, Any]:
    """ModelDetails in Ollama's key order; `context_length` (Ollama 0.30) goes last when known."""
    family = family or family_of(upstream_id)
    quantization, _ = quantization_of(upstream_id)
    details: dict[str, Any] = {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size_of(upstream_id),
        "quantization_level": quantization,
    }
    if context_length:
        details["context_length"] = context_length
    return details


def estimated_size(upstream_id: str) -> int:
    _, width = quantization_of(upstream_id)
    return int(_parameter_count(parameter_size_of(upstream_id)) * width)


def tags_entry(listed: ListedName, modified_at: str) -> dict[str, Any]:
    """One /api/tags item for a vLLM-served model (with Ollama 0.30's `capabilities`)."""
    name = tag_name(listed.name)
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at,
        "size": estimated_size(listed.upstream_id),
        "digest": digest_of("vllm", listed.upstream_id),
        "details": model_details(listed.upstream_id, listed.family, listed.context_length),
        "capabilities": list(listed.capabilities),
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


def fim_template(begin: str, hole: str, end: str) -> str:
    """A Go-template text for /api/show that mentions `.Suffix`: Continue turns fill-in-the-middle on
    when it sees it."""
    return (
        f"{{{{- if .Suffix }}}}{begin}{{{{ .Prompt }}}}{hole}{{{{ .Suffix }}}}{end}"
        "{{- else }}{{ .Prompt }}{{- end }}"
    )


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
    details = model_details(upstream_id, family, context_length)
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


def ps_entry(listed: ListedName, expires_at: str) -> dict[str, Any]:
    """/api/ps item: vLLM keeps its model loaded for as long as it runs. As in Ollama, `details`
    has no context length here: the top-level `context_length` is the loaded one."""
    name = tag_name(listed.name)
    size = estimated_size(listed.upstream_id)
    return {
        "name": name,
        "model": name,
        "size": size,
        "digest": digest_of("vllm", listed.upstream_id),
        "details": model_details(listed.upstream_id, listed.family),
        "expires_at": expires_at,
        "size_vram": size,
        "context_length": listed.context_length or 0,
    }


# ---- one model list across backends ------------------------------------------------------------
# vLLM's names come first and own their name; Ollama Vision's models follow unless a vLLM name (or
# the catalog) already took theirs. A name is compared the way Ollama looks names up.


def ollama_name(model: dict[str, Any]) -> str:
    return str(model.get("model") or model.get("name") or "")


def tags_listing(
    vllm_names: list[ListedName],
    modified: dict[str, str],
    ollama_models: list[dict[str, Any]],
    ollama_entries: list[tuple[tuple[str, ...], str]],
    discover: bool,
) -> list[dict[str, Any]]:
    """/api/tags `models`. `modified`: upstream id -> modified_at; `ollama_entries`: the catalog's
    Ollama Vision models as (names, upstream id), listed only when Ollama Vision has the model."""
    models = [tags_entry(listed, modified[listed.upstream_id]) for listed in vllm_names]
    seen = {listed.key for listed in vllm_names}
    by_key = {normalize_name(ollama_name(m)): m for m in ollama_models}
    for names, upstream_id in ollama_entries:
        source = by_key.get(normalize_name(upstream_id))
        if source is None:
            continue  # not pulled (or Ollama Vision down): listing it would invite a failing chat
        for name in names:
            if normalize_name(name) not in seen:
                seen.add(normalize_name(name))
                models.append({**source, "name": tag_name(name), "model": tag_name(name)})
    if discover:
        for key, source in by_key.items():
            if key not in seen:
                seen.add(key)
                models.append(source)
    return models


def ps_listing(
    vllm_names: list[ListedName], expires_at: str, ollama_running: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """/api/ps `models`: every vLLM name (loaded for as long as vLLM runs), then what Ollama Vision
    has loaded under names vLLM does not own."""
    models = [ps_entry(listed, expires_at) for listed in vllm_names]
    seen = {listed.key for listed in vllm_names}
    models.extend(m for m in ollama_running if normalize_name(ollama_name(m)) not in seen)
    return models


def openai_models_listing(
    vllm_names: list[ListedName],
    created: dict[str, int],
    ollama_models: list[dict[str, Any]],
    ollama_entries: list[tuple[tuple[str, ...], str]],
    now: int,
) -> list[dict[str, Any]]:
    """/v1/models `data`, as Ollama's OpenAI layer lists models (`owned_by` says which backend):
    the same names as /api/tags, the catalog's names for Ollama Vision models included."""
    data = [
        {"id": listed.name, "object": "model", "created": created[listed.upstream_id], "owned_by": "vllm"}
        for listed in vllm_names
    ]
    seen = {listed.key for listed in vllm_names}
    available = {normalize_name(ollama_name(m)) for m in ollama_models}
    names = [name for names, upstream in ollama_entries if normalize_name(upstream) in available for name in names]
    for name in [*names, *(ollama_name(m) for m in ollama_models)]:
        if normalize_name(name) not in seen:
            seen.add(normalize_name(name))
            data.append({"id": name, "object": "model", "created": now, "owned_by": "library"})
    return data
