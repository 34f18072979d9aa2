"""OpenAI tool calls -> Ollama tool calls. Pure.

vLLM streams a call as pieces (`{index, id?, function: {name?, arguments?: "<fragment>"}}`); Ollama
clients want each call whole, once, with `arguments` as a JSON object.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapter.errors import OllamaError


class ToolCallError(ValueError):
    """A tool call whose arguments are not a JSON object."""


class ToolCallShapeError(OllamaError):
    """Tool-call deltas of a shape no OpenAI-compatible server sends."""

    def __init__(self, what: str) -> None:
        super().__init__(502, f"vLLM sent a tool call of an unexpected shape ({what})")


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


def tool_call_as_text(call: dict[str, Any], cut_off: bool = False) -> str:
    """An unparsable call as the text the model wrote, the way Ollama leaves model output it cannot
    parse as a tool call in `content`. A call cut off by the token limit ends where it was cut."""
    function = call.get("function") or {}
    name = orjson.dumps(function.get("name") or "").decode()
    text = f'<tool_call>{{"name": {name}, "arguments": {function.get("arguments") or ""}'
    return text if cut_off else text + "}</tool_call>"


class ToolCallAccumulator:
    """Collects streamed tool-call fragments by index until a finish_reason arrives."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        if type(deltas) is not list:
            raise ToolCallShapeError("tool_calls is not a list")
        for position, delta in enumerate(deltas):
            if type(delta) is not dict:
                raise ToolCallShapeError("a tool call delta is not an object")
            index = delta.get("index", position)
            if type(index) is not int:
                raise ToolCallShapeError("a tool call index is not an integer")
            call = self.calls.get(index)
            if call is None:
                call = self.calls[index] = {"id": "", "function": {"name": "", "arguments": ""}}
            call_id = delta.get("id")
            if call_id:
                call["id"] = str(call_id)
            function = delta.get("function") or {}
            if type(function) is not dict:
                raise ToolCallShapeError("a tool call function is not an object")
            name = function.get("name")
            if name:
                call["function"]["name"] += str(name)
            arguments = function.get("arguments")
            if arguments:
                if isinstance(arguments, dict):  # some servers send whole objects
                    arguments = orjson.dumps(arguments).decode()
                elif type(arguments) is not str:
                    raise ToolCallShapeError("tool call arguments are neither a string nor an object")
                call["function"]["arguments"] += arguments

    def __bool__(self) -> bool:
        return bool(self.calls)

    def flush(self, cut_off: bool = False) -> tuple[list[dict[str, Any]], str]:
        """Whole Ollama calls (indexed 0, 1, ... in index order), plus text for calls whose arguments
        do not parse: the last one when the token limit cut it off (`cut_off`), or one the model got
        wrong. Ollama leaves model output it cannot parse as a tool call in the content."""
        calls, text = [], ""
        last = max(self.calls, default=None)
        for index in sorted(self.calls):
            raw = self.calls[index]
            try:
                calls.append(openai_tool_call_to_ollama(raw, len(calls)))
            except ToolCallError:
                text += tool_call_as_text(raw, cut_off=cut_off and index == last)
        self.calls.clear()
        return calls, text
