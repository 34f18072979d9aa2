"""Request parsing at the edge: body -> validated dict, or a 400 that names the problem.

Types are strict like Go's encoding/json (a string where a bool belongs is an error); unknown fields
are kept (Ollama ignores them; some we pass on deliberately).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.requests import ClientDisconnect, Request

from adapter.errors import BadRequest, ClientGone, OllamaError

StrictNumber = StrictInt | float


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ToolCallFunction(_Strict):
    name: StrictStr = ""
    arguments: dict[str, Any] | StrictStr | None = None
    index: StrictInt | None = None


class ToolCall(_Strict):
    id: StrictStr | None = None
    type: StrictStr | None = None
    function: ToolCallFunction


class Message(_Strict):
    role: StrictStr
    content: StrictStr | None = None
    thinking: StrictStr | None = None
    images: list[StrictStr] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: StrictStr | None = None
    tool_call_id: StrictStr | None = None


class _Common(_Strict):
    model: StrictStr | None = None
    name: StrictStr | None = None  # ollama-js and Continue send `name`
    format: StrictStr | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: StrictBool | None = None
    keep_alive: StrictNumber | StrictStr | None = None
    think: StrictBool | StrictStr | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    truncate: StrictBool | None = None
    shift: StrictBool | None = None


class ChatRequest(_Common):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Common):
    prompt: StrictStr | None = None
    suffix: StrictStr | None = None
    images: list[StrictStr] | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    context: list[StrictInt] | None = None
    raw: StrictBool | None = None


class OpenAIChatRequest(_Strict):
    model: StrictStr
    messages: list[dict[str, Any]]
    stream: StrictBool | None = None


class OpenAICompletionRequest(_Strict):
    model: StrictStr
    prompt: StrictStr | list[Any]
    stream: StrictBool | None = None


class OpenAIEmbeddingRequest(_Strict):
    model: StrictStr
    input: StrictStr | list[Any]


class AnthropicMessagesRequest(_Strict):
    model: StrictStr
    messages: list[dict[str, Any]]
    stream: StrictBool | None = None


class AnthropicCountTokensRequest(_Strict):
    model: StrictStr
    messages: list[dict[str, Any]]


class ResponsesRequest(_Strict):
    model: StrictStr
    input: StrictStr | list[Any] | None = None
    stream: StrictBool | None = None


def describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-after"))
    # Union members add their type names to the location; keep the field path readable.
    loc = re.sub(r"\.(str|dict\[str,any\]|bool|int|float|list\[.*?\]|none|is-instance\[.*?\])", "", loc)
    msg = str(err.get("msg", "invalid value"))
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"invalid request: field {loc!r}: {msg}{more}" if loc else f"invalid request: {msg}{more}"


# Deeper than any real request; orjson (which re-encodes bodies for the upstream) stops at 254.
MAX_JSON_DEPTH = 128


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON arrays and objects nest deeper than `limit` (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The raw body, refusing more than max_bytes (413) without reading it all into memory first.
    One growing buffer, never a list of chunks plus their join: a large body is held once."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise OllamaError(413, f"request body too large (limit {max_bytes} bytes)")
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > max_bytes:
                raise OllamaError(413, f"request body too large (limit {max_bytes} bytes)")
            body += chunk
    except ClientDisconnect:
        raise ClientGone() from None
    return body


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """Parse the body as JSON whatever the Content-Type (curl -d sends form-urlencoded)."""
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    del raw  # the parsed body is all that is kept
    if not isinstance(body, dict):
        raise BadRequest(f"invalid request body: expected a JSON object, got {type(body).__name__}")
    if too_deep(body):
        raise BadRequest(f"invalid JSON in request body: nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def validate(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """Check types; return the body as given (fields we do not model are kept untouched)."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(describe(exc)) from None
    return body


def model_name(body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")
    if not name or not isinstance(name, str) or not name.strip():
        raise BadRequest("model is required")
    return name


_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: a number of seconds or a Go duration string (`5m`, `1h30m`, `0`)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("invalid keep_alive: expected a number or a duration string")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    if not text or _DURATION.sub("", text):
        if text.replace(".", "", 1).isdigit():
            raise BadRequest(f'time: missing unit in duration "{value}"')
        raise BadRequest(f'time: invalid duration "{value}"')
    return sign * sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
