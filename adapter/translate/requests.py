"""Ollama request dicts -> OpenAI (vLLM) request dicts. Pure: no I/O, no clock.

Inputs are already validated for shape (adapter.schemas); these functions decide what vLLM is asked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from typing import Any

import orjson

from adapter.errors import BadRequest
from adapter.translate.options import ollama_options_to_sampling

THINK_LEVELS = ("low", "medium", "high", "max")


def sniff_image_mime(data: bytes) -> str:
    """The MIME type of an image from its first bytes (Ollama sniffs too; JPEG when unsure)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def image_to_data_url(image_b64: str) -> str:
    """Ollama sends raw base64 (no data: prefix); OpenAI wants a data URL."""
    if image_b64.startswith("data:"):
        image_b64 = image_b64.partition(",")[2]
    if any(ch.isspace() for ch in image_b64[:80]) or image_b64[-2:].isspace():
        # Go's decoder (and so Ollama) skips line breaks, as in base64.encodebytes output; vLLM does not.
        image_b64 = "".join(image_b64.split())
    try:
        raw = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"invalid image input: not valid base64 ({exc})") from None
    if not raw:
        raise BadRequest("invalid image input: empty image")
    return f"data:{sniff_image_mime(raw[:16])};base64,{image_b64}"


def _content_with_images(text: str, images: list[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"type": "text", "text": text})
    parts.extend({"type": "image_url", "image_url": {"url": image_to_data_url(img)}} for img in images)
    return parts


def tool_call_id_for(message_index: int, call_index: int) -> str:
    """Stable ids for history tool calls that arrive without one: the same history gets the same ids,
    so vLLM's prefix cache keeps working across turns. Nine alphanumerics: the one shape every vLLM
    tokenizer mode accepts (Mistral's insists on it)."""
    return hashlib.sha256(f"{message_index}:{call_index}".encode()).hexdigest()[:9]


def _arguments_json(arguments: Any) -> str:
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments  # already serialised by a client that speaks OpenAI's shape
    return orjson.dumps(arguments).decode()


def ollama_messages_to_openai(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama chat history -> OpenAI messages.

    Tool results without `tool_call_id` (Home Assistant sends them so) are matched to the preceding
    assistant's calls: by `tool_name` when given, else in call order. They are never dropped.
    """
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, name) of the last assistant turn's open calls
    for i, msg in enumerate(messages):
        role = str(msg.get("role") or "user").lower()
        content = msg.get("content") or ""
        if role == "assistant":
            converted: dict[str, Any] = {"role": "assistant", "content": content}
            calls = msg.get("tool_calls") or []
            if calls:
                unanswered = []
                oa_calls = []
                for j, call in enumerate(calls):
                    function = call.get("function") or {}
                    call_id = call.get("id") or tool_call_id_for(i, j)
                    name = function.get("name") or ""
                    oa_calls.append(
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": _arguments_json(function.get("arguments"))},
                        }
                    )
                    unanswered.append((call_id, name))
                converted["tool_calls"] = oa_calls
            out.append(converted)
        elif role == "tool":
            name = msg.get("tool_name") or msg.get("name")
            call_id = msg.get("tool_call_id")
            if call_id:
                unanswered = [c for c in unanswered if c[0] != call_id]
                if not name:
                    name = next((n for cid, n in _all_calls(out) if cid == call_id), None)
            else:
                match = next((c for c in unanswered if name and c[1] == name), None)
                if match is None and unanswered:
                    match = unanswered[0]
                if match is not None:
                    unanswered.remove(match)
                    call_id, name = match[0], name or match[1]
                else:
                    call_id = tool_call_id_for(i, 0)
            tool_msg: dict[str, Any] = {"role": "tool", "content": content, "tool_call_id": call_id}
            if name:
                tool_msg["name"] = name
            out.append(tool_msg)
        else:
            out.append({"role": role, "content": _content_with_images(content, msg.get("images"))})
    return out


def _all_calls(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["id"], c["function"]["name"]) for m in messages for c in m.get("tool_calls") or () if "id" in c]


def response_format_for(fmt: Any) -> dict[str, Any] | None:
    """Ollama `format` -> OpenAI `response_format`. Never the removed `guided_json` family."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        title = fmt.get("title")
        name = (
            "".join(ch for ch in title if ch.isascii() and (ch.isalnum() or ch in "_-"))[:64]
            if isinstance(title, str)
            else ""
        )
        return {"type": "json_schema", "json_schema": {"name": name or "schema", "schema": fmt}}
    raise BadRequest(f'invalid format: {orjson.dumps(fmt).decode()}; expected "json" or a valid JSON Schema object')


def thinking_controls_for(think: Any) -> dict[str, Any]:
    """Ollama `think` -> vLLM's chat-template switch (+ effort level). Absent: the model's default."""
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    if isinstance(think, str) and think in THINK_LEVELS:
        controls: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": think}}
        if think != "max":
            controls["reasoning_effort"] = think
        return controls
    raise BadRequest(
        f'invalid think value: {orjson.dumps(think).decode()} (must be "max", "high", "medium", "low", true, or false)'
    )


def _common(req: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    # Always a stream, with usage: a whole answer is the stream folded together by the gateway, so
    # it has the same first-token timing (Ollama's prompt_eval_duration) as a streamed one.
    body: dict[str, Any] = {"model": upstream_model, "stream": True, "stream_options": {"include_usage": True}}
    body.update(ollama_options_to_sampling(req.get("options")))
    if req.get("logprobs"):
        body["logprobs"] = True
        top = req.get("top_logprobs")
        if top:
            body["top_logprobs"] = top
    return body


def _merge_extra(body: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """Per-model request defaults from the catalog (e.g. tool_choice for extraction models):
    the request's own values win."""
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    return body


def strict_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**tool, "function": {**tool["function"], "strict": True}} if isinstance(tool.get("function"), dict) else tool
        for tool in tools
    ]


def ollama_chat_to_openai(
    req: dict[str, Any],
    upstream_model: str,
    extra: dict[str, Any] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    body = _common(req, upstream_model)
    body["messages"] = ollama_messages_to_openai(req.get("messages") or [])
    if req.get("tools"):  # vLLM 0.32 rejects "tools": [] with a 400; the Python client always sends it.
        body["tools"] = strict_tools(req["tools"]) if strict else req["tools"]
        if req.get("tool_choice") is not None:
            body["tool_choice"] = req["tool_choice"]
    response_format = response_format_for(req.get("format"))
    if response_format:
        body["response_format"] = response_format
    body.update(thinking_controls_for(req.get("think")))
    if body.get("max_tokens") is None:
        body.pop("max_tokens", None)
    return _merge_extra(body, extra if req.get("tools") else _without_tool_keys(extra))


def ollama_generate_to_openai_chat(
    req: dict[str, Any], upstream_model: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Templated generate: system + prompt as chat messages, so the model's chat template applies
    (Ollama applies the model's template too)."""
    messages: list[dict[str, Any]] = []
    if req.get("system"):
        messages.append({"role": "system", "content": req["system"]})
    messages.append({"role": "user", "content": req.get("prompt") or "", "images": req.get("images")})
    chat_req = {**req, "messages": messages, "tools": None}
    return ollama_chat_to_openai(chat_req, upstream_model, extra)


def ollama_generate_to_openai_completion(
    req: dict[str, Any], upstream_model: str, prompt: str | None = None
) -> dict[str, Any]:
    """Raw generate (no template) -> /v1/completions. `prompt` overrides req["prompt"] (FIM)."""
    body = _common(req, upstream_model)
    body["prompt"] = req.get("prompt") or "" if prompt is None else prompt
    # vLLM's /v1/completions stops after 16 tokens unless told otherwise; Ollama has no such cap.
    body.setdefault("max_tokens", None)
    response_format = response_format_for(req.get("format"))
    if response_format:
        body["response_format"] = response_format
    if body.get("logprobs"):
        body["logprobs"] = body.pop("top_logprobs", None) or 1  # completions take an int here
    return body


def _without_tool_keys(extra: dict[str, Any] | None) -> dict[str, Any] | None:
    if not extra:
        return extra
    return {k: v for k, v in extra.items() if k not in ("tool_choice", "parallel_tool_calls")}


# ---- images, whatever the API family ---------------------------------------------------------------
# Which content parts carry an image: OpenAI chat (`image_url`), Anthropic Messages (`image`) and the
# Responses API (`input_image`). Ollama's own requests carry `images` lists instead.
IMAGE_PART_TYPES = frozenset(("image_url", "image", "input_image"))


def ollama_messages_have_images(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("images") for m in messages)


def _parts_have_images(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES for part in content
    )


def openai_request_has_images(body: dict[str, Any]) -> bool:
    """An OpenAI chat, Anthropic Messages or Responses request with an image anywhere in its input."""
    items = body.get("messages")
    if items is None:
        items = body.get("input")
    if not isinstance(items, list):
        return False
    return any(
        isinstance(item, dict) and (item.get("type") in IMAGE_PART_TYPES or _parts_have_images(item.get("content")))
        for item in items
    )


# ---- history truncation (Ollama's `truncate`) -------------------------------------------------------


def history_windows(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The shorter histories to try when the whole one does not fit, longest first, as Ollama
    truncates: the oldest messages go first, system messages among them stay (moved to the front),
    the last message always stays. A window never starts with a tool result whose call was dropped."""
    windows = []
    for start in range(1, len(messages)):
        first = messages[start]
        if first.get("role") == "tool" and start < len(messages) - 1:
            continue
        kept_system = [m for m in messages[:start] if m.get("role") == "system"]
        windows.append(kept_system + messages[start:])
    return windows


_CONTEXT_LIMIT = re.compile(r"maximum (?:context|model) length (?:is|of) (\d+)")


def context_overflow_limit(message: str) -> int | None:
    """vLLM's 400 for a prompt longer than the model's context, and the limit it names; None for
    any other error. (0.32: "This model's maximum context length is N tokens. However, your prompt
    contains ..."; a prompt exactly at the limit: "... longer than the maximum model length of N".)"""
    if "prompt" not in message:
        return None
    match = _CONTEXT_LIMIT.search(message)
    return int(match.group(1)) if match else None


# ---- prefix affinity ----------------------------------------------------------------------------------

# How much of the start of a prompt names its prefix: a long system prompt alone (a service's fixed
# instructions: its requests share them), else the system prompt and the first messages (one chat's
# turns share them).
AFFINITY_PREFIX_CHARS = 2048


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def affinity_key(body: dict[str, Any]) -> int | None:
    """A hash of the first characters of the prompt, however the request spells it (OpenAI or
    Anthropic messages, a prompt, Responses input); None when there is no text to go by. zlib's
    crc32, not hash(): every worker process must map a prefix to the same replica."""
    texts: list[str] = []
    texts += _texts(body.get("system")) + _texts(body.get("instructions"))
    items = body.get("messages")
    if items is None:
        items = body.get("input")
    if isinstance(items, str):
        texts.append(items)
    elif isinstance(items, list):
        size = sum(map(len, texts))
        for item in items:
            if size >= AFFINITY_PREFIX_CHARS:
                break
            if isinstance(item, dict):
                parts = _texts(item.get("content"))
                texts += parts
                size += sum(map(len, parts))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        texts.append(prompt)
    prefix = "".join(texts)[:AFFINITY_PREFIX_CHARS]
    return zlib.crc32(prefix.encode()) if prefix else None


def with_cache_salt(payload: dict[str, Any], salt: str | None) -> dict[str, Any]:
    """The request as vLLM gets it from a tenant: its `cache_salt` (vLLM's prefix cache never shares
    blocks between salts), in place of any the client sent, which could name another tenant's. No
    tenant, no salt: the request is unchanged."""
    if salt is None:
        return payload
    return {**payload, "cache_salt": salt}
