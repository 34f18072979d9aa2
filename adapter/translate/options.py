"""Ollama `options` -> vLLM sampling parameters. The whole mapping is the table below."""

from __future__ import annotations

import math
from typing import Any

from adapter.errors import BadRequest

# Ollama option -> (vLLM/OpenAI parameter, kind). Kinds say how Ollama types the value.
SAMPLING_OPTIONS: dict[str, tuple[str, str]] = {
    "num_predict": ("max_tokens", "int"),
    "temperature": ("temperature", "float"),
    "top_p": ("top_p", "float"),
    "top_k": ("top_k", "int"),
    "min_p": ("min_p", "float"),
    "seed": ("seed", "int"),
    "stop": ("stop", "stop"),
    "repeat_penalty": ("repetition_penalty", "float"),
    "presence_penalty": ("presence_penalty", "float"),
    "frequency_penalty": ("frequency_penalty", "float"),
}

# Accepted and type-checked like Ollama, but engine-side (or removed from Ollama): never forwarded.
# vLLM logs and ignores unknown keys, so forwarding them would only hide mistakes.
IGNORED_OPTIONS: dict[str, str] = {
    "num_ctx": "int",
    "num_keep": "int",
    "typical_p": "float",
    "repeat_last_n": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
    # Removed from Ollama's server in 2025 but still sent by the official clients.
    "mirostat": "int",
    "mirostat_tau": "float",
    "mirostat_eta": "float",
    "penalize_newline": "bool",
    "tfs_z": "float",
    "numa": "bool",
    "low_vram": "bool",
    "f16_kv": "bool",
    "logits_all": "bool",
    "vocab_only": "bool",
    "use_mlock": "bool",
    "embedding_only": "bool",
}

_INT64 = 2**63


def _check(name: str, kind: str, value: Any) -> Any:
    """Type-check one option as Ollama's Options.FromMap does; returns the normalised value."""
    if value is None:
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadRequest(f'option "{name}" must be of type boolean')
        return value
    if kind == "stop":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        raise BadRequest(f'option "{name}" must be of type array of strings')
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "integer" if kind == "int" else "number"
        raise BadRequest(f'option "{name}" must be of type {expected}')
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f'option "{name}" must be a finite number')
    if kind == "int":
        # Ollama truncates floats given for integer options.
        value = int(value)
        if not -_INT64 <= value < _INT64:
            raise BadRequest(f'option "{name}" is out of range for a 64-bit integer')
        return value
    if abs(value) > 3.4e38:
        raise BadRequest(f'option "{name}" is out of range')
    return float(value)


def ollama_options_to_sampling(options: dict[str, Any] | None) -> dict[str, Any]:
    """Map `options` to vLLM sampling parameters; unknown keys are ignored, as Ollama does."""
    if not options:
        return {}
    if not isinstance(options, dict):
        raise BadRequest('"options" must be an object')
    params: dict[str, Any] = {}
    for name, raw in options.items():
        if name in IGNORED_OPTIONS:
            _check(name, IGNORED_OPTIONS[name], raw)
            continue
        spec = SAMPLING_OPTIONS.get(name)
        if spec is None:
            continue
        target, kind = spec
        value = _check(name, kind, raw)
        if value is None:
            continue
        if name == "num_predict" and value < 0:
            continue  # -1 = no limit, -2 = fill the context: vLLM's default; it rejects max_tokens < 1.
        if name == "num_predict" and value == 0:
            value = 1  # vLLM rejects 0; Ollama generates nothing useful either. Closest legal request.
        if name == "seed" and value < 0:
            continue  # -1 means "random" in Ollama; vLLM takes no seed for that.
        if name == "repeat_penalty" and value <= 0:
            continue  # vLLM requires > 0; Ollama treats 0 as "off", i.e. 1.0.
        if name == "top_k" and value <= 0:
            value = -1  # Ollama's 0 disables top-k; vLLM's spelling of that is -1.
        if name == "stop" and not value:
            continue
        params[target] = value
    return params
