"""OpenAI tool calls -> Ollama tool calls. Pure.

vLLM streams a call as pieces (`{index, id?, function: {name?, arguments?: "<fragment>"}}`); Ollama
clients want each call whole, once, with `arguments` as a JSON object.
"""

from __future__ import annotations

from typing import Any

import orjson


class ToolCallError(ValueError):
    """A tool call whose arguments are not a JSON object."""


def parse_arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise ToolCallError(f"tool call arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ToolCallError("tool call arguments are not a JSON object")
    return value


def openai_tool_call_to_ollama(call: dict[str, Any], index: int) -> dict[str, Any]:
    function = call.get("function") or {}
    converted: dict[str, Any] = {}
    if call.get("id"):
        converted["id"] = call["id"]
    converted["function"] = {
        "index": index,
        "name": function.get("name") or "",
        "arguments": parse_arguments(function.get("arguments")),
    }
    return converted


def openai_tool_calls_to_ollama(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [openai_tool_call_to_ollama(c, c.get("index", i)) for i, c in enumerate(calls)]


def tool_call_as_text(call: dict[str, Any]) -> str:
    """How an unparsable call reaches the client when vLLM finished normally: as text, the way
    Ollama leaves model output it cannot parse as a tool call in `content`."""
    function = call.get("function") or {}
    name = orjson.dumps(function.get("name") or "").decode()
    return f'<tool_call>{{"name": {name}, "arguments": {function.get("arguments") or ""}}}</tool_call>'


class ToolCallAccumulator:
    """Collects streamed tool-call fragments by index until a finish_reason arrives."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for position, delta in enumerate(deltas):
            index = delta.get("index", position)
            call = self.calls.get(index)
            if call is None:
                call = self.calls[index] = {"id": "", "function": {"name": "", "arguments": ""}}
            if delta.get("id"):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            arguments = function.get("arguments")
            if arguments:
                if isinstance(arguments, dict):  # some servers send whole objects
                    arguments = orjson.dumps(arguments).decode()
                call["function"]["arguments"] += arguments

    def __bool__(self) -> bool:
        return bool(self.calls)

    def flush(self, truncated: bool) -> tuple[list[dict[str, Any]], str]:
        """Whole Ollama calls, plus text for calls that could not be parsed.

        A call cut off by the length limit raises ToolCallError: the client must learn it is
        incomplete rather than get half a call."""
        calls, text = [], ""
        for position, index in enumerate(sorted(self.calls)):
            raw = self.calls[index]
            try:
                calls.append(openai_tool_call_to_ollama(raw, position))
            except ToolCallError as exc:
                if truncated:
                    raise ToolCallError(f"{exc} (the call was cut off by the token limit)") from None
                text += tool_call_as_text(raw)
        self.calls.clear()
        return calls, text
