"""OpenAI (vLLM) responses and stream chunks -> Ollama responses and NDJSON chunks. Pure.

Clock readings are passed in by the caller; nothing here does I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from adapter.errors import OllamaError
from adapter.translate.tools import ToolCallAccumulator

Target = Literal["chat", "generate"]

# vLLM finish_reason -> Ollama done_reason. Ollama only knows stop/length (tool calls end with "stop").
DONE_REASONS: dict[str, str] = {"length": "length"}


def done_reason_for(finish_reason: str | None) -> str:
    return DONE_REASONS.get(finish_reason or "stop", "stop")


class UpstreamStreamError(OllamaError):
    """vLLM sent an error event inside a 200 stream, or a chunk of a shape no vLLM sends."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


def error_message_of(payload: Any) -> str:
    """vLLM's error bodies, current and older shapes, FastAPI's `detail`, plain strings."""
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if msg:
                return str(msg)
        elif isinstance(err, str) and err:
            return err
        detail = payload.get("detail") or payload.get("message")
        if detail:
            return detail if isinstance(detail, str) else str(detail)
    if isinstance(payload, str) and payload:
        return payload
    return "upstream error"


_last_second = -1
_last_prefix = ""


def rfc3339_utc(ns: int | None = None) -> str:
    """Go's RFC3339Nano in UTC: nanoseconds with trailing zeros trimmed, `Z` suffix."""
    global _last_second, _last_prefix
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    if seconds != _last_second:  # strftime once a second, not once a chunk
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = seconds
    if fraction:
        return f"{_last_prefix}.{fraction:09d}".rstrip("0") + "Z"
    return _last_prefix + "Z"


@dataclass(slots=True)
class Timing:
    """Monotonic clock readings (ns) of one request, taken by the route/streaming layer."""

    start: int
    upstream: int = 0  # just before the upstream request was sent
    first: int = 0  # first generated token arrived
    end: int = 0


METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def token_count(usage: dict[str, Any], key: str) -> int:
    """A count from vLLM's usage; anything but a whole number counts as unknown (0)."""
    value = usage.get(key)
    return value if type(value) is int and value >= 0 else 0


def final_metrics(timing: Timing, usage: dict[str, Any] | None) -> dict[str, int]:
    """Ollama's final-chunk statistics, in its key order. Counts from vLLM's usage; durations in ns."""
    end = timing.end or timing.start
    upstream = timing.upstream or timing.start
    first = timing.first or end
    usage = usage or {}
    metrics = {
        "total_duration": max(end - timing.start, 0),
        "load_duration": max(upstream - timing.start, 0),
        "prompt_eval_count": token_count(usage, "prompt_tokens"),
        "prompt_eval_duration": max(first - upstream, 0),
        "eval_count": token_count(usage, "completion_tokens"),
        "eval_duration": max(end - first, 0),
    }
    return metrics


def chat_logprobs_to_ollama(logprobs: Any) -> list[dict[str, Any]]:
    """vLLM's chat `logprobs` -> Ollama's list; entries of another shape are left out."""
    if type(logprobs) is not dict or type(logprobs.get("content")) is not list:
        return []
    out = []
    for item in logprobs["content"]:
        if type(item) is not dict:
            continue
        entry: dict[str, Any] = {"token": item.get("token", ""), "logprob": item.get("logprob", 0.0)}
        if item.get("bytes") is not None:
            entry["bytes"] = item["bytes"]
        top = item.get("top_logprobs")
        if top and type(top) is list:
            entry["top_logprobs"] = [
                {
                    "token": t.get("token", ""),
                    "logprob": t.get("logprob", 0.0),
                    **({"bytes": t["bytes"]} if t.get("bytes") else {}),
                }
                for t in top
                if type(t) is dict
            ]
        out.append(entry)
    return out


def completion_logprobs_to_ollama(logprobs: Any) -> list[dict[str, Any]]:
    """vLLM's completions `logprobs` (parallel lists) -> Ollama's list."""
    if type(logprobs) is not dict:
        return []
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    tops = logprobs.get("top_logprobs")
    tokens = tokens if type(tokens) is list else []
    values = values if type(values) is list else []
    tops = tops if type(tops) is list else []
    out = []
    for i, token in enumerate(tokens):
        entry: dict[str, Any] = {
            "token": token,
            "logprob": values[i] if i < len(values) and values[i] is not None else 0.0,
        }
        if i < len(tops) and type(tops[i]) is dict and tops[i]:
            entry["top_logprobs"] = [{"token": t, "logprob": lp} for t, lp in tops[i].items()]
        out.append(entry)
    return out


def _chunk(model: str, created_at: str, target: Target, text: str, thinking: str | None) -> dict[str, Any]:
    if target == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return {"model": model, "created_at": created_at, "message": message, "done": False}
    chunk: dict[str, Any] = {"model": model, "created_at": created_at, "response": text}
    if thinking:
        chunk["thinking"] = thinking
    chunk["done"] = False
    return chunk


def _shape_error(what: str) -> UpstreamStreamError:
    return UpstreamStreamError(f"vLLM sent a stream chunk of an unexpected shape ({what})")


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise _shape_error(f"{what} is not a string")
    return value


class StreamTranslator:
    """vLLM stream chunks (chat or completions) -> Ollama chunks for /api/chat or /api/generate.

    State is what Ollama's final chunk needs: finish reason, usage, tool calls still being assembled.
    The upstream's shape is checked where it is read, so a chunk no vLLM sends is the upstream's
    fault (UpstreamStreamError), never an exception of the gateway's own.
    """

    __slots__ = ("finish_reason", "logprobs", "model", "target", "tools", "usage")

    def __init__(self, model: str, target: Target, logprobs: bool = False) -> None:
        self.model = model
        self.target = target
        self.logprobs = logprobs
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.tools = ToolCallAccumulator()

    def feed(self, chunk: Any, created_at: str) -> list[dict[str, Any]]:
        """One upstream chunk -> zero or more Ollama chunks (never the final one)."""
        if type(chunk) is not dict:
            raise _shape_error("not an object")
        choices = chunk.get("choices")
        if not choices:
            if "error" in chunk:
                raise UpstreamStreamError(f"vLLM error: {error_message_of(chunk)}")
            usage = chunk.get("usage")
            if usage:
                self._set_usage(usage)
            return []
        if type(choices) is not list or type(choices[0]) is not dict:
            raise _shape_error("choices")
        usage = chunk.get("usage")
        if usage:  # continuous_usage_stats puts it on every chunk
            self._set_usage(usage)
        choice = choices[0]
        delta = choice.get("delta")
        if delta is not None:  # chat.completion.chunk
            if type(delta) is not dict:
                raise _shape_error("delta")
            # Checked inline, not through _text: this runs for every token.
            text = delta.get("content")
            if type(text) is not str:
                text = _text(text, "content")
            thinking = delta.get("reasoning") or delta.get("reasoning_content")
            if type(thinking) is not str:
                thinking = _text(thinking, "reasoning")
            tool_deltas = delta.get("tool_calls")
            if tool_deltas:
                self.tools.add(tool_deltas)
        else:  # text_completion
            text = _text(choice.get("text"), "text")
            thinking = ""
        out: list[dict[str, Any]] = []
        if text or thinking:
            ollama_chunk = _chunk(self.model, created_at, self.target, text, thinking)
            if self.logprobs:
                lp = choice.get("logprobs")
                converted = chat_logprobs_to_ollama(lp) if delta is not None else completion_logprobs_to_ollama(lp)
                if converted:
                    ollama_chunk["logprobs"] = converted
            out.append(ollama_chunk)
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = _text(finish, "finish_reason")
            if self.tools:
                out.extend(self._flush_tools(created_at))
        return out

    def _set_usage(self, usage: Any) -> None:
        if type(usage) is not dict:
            raise _shape_error("usage")
        self.usage = usage

    def _flush_tools(self, created_at: str) -> list[dict[str, Any]]:
        """Each whole call in a line of its own, as Ollama's parsers emit them (clients such as
        Haystack number calls by line); a call whose arguments do not parse stays text."""
        calls, text = self.tools.flush(cut_off=self.finish_reason == "length")
        out = []
        for call in calls:
            chunk = _chunk(self.model, created_at, self.target, "", None)
            if self.target == "chat":
                chunk["message"]["tool_calls"] = [call]
            else:
                chunk["tool_calls"] = [call]
            out.append(chunk)
        if text:
            out.append(_chunk(self.model, created_at, self.target, text, None))
        return out

    @property
    def complete(self) -> bool:
        """Whether the upstream said why it stopped: a stream without it was cut off."""
        return self.finish_reason is not None

    def final(self, created_at: str, timing: Timing) -> list[dict[str, Any]]:
        """What ends the stream: any tool calls never flushed (no finish_reason seen), then the
        `done: true` chunk with Ollama's statistics."""
        out = self._flush_tools(created_at) if self.tools else []
        done = final_chunk(self.model, created_at, self.target, done_reason_for(self.finish_reason))
        done.update(final_metrics(timing, self.usage))
        out.append(done)
        return out


def whole_response(chunks: list[dict[str, Any]], final: dict[str, Any], target: Target) -> dict[str, Any]:
    """A non-streamed answer: the stream's chunks folded into its final chunk, as Ollama collects
    its own stream (text and thinking concatenated, tool calls and logprobs in order)."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    for chunk in chunks:
        part = chunk["message"] if target == "chat" else chunk
        texts.append(part["content"] if target == "chat" else part["response"])
        if "thinking" in part:
            thinking.append(part["thinking"])
        if "tool_calls" in part:
            calls.extend(part["tool_calls"])
        if "logprobs" in chunk:
            logprobs.extend(chunk["logprobs"])
    out = _chunk(final["model"], final["created_at"], target, "".join(texts), "".join(thinking))
    if calls:
        if target == "chat":
            out["message"]["tool_calls"] = calls
        else:
            out["tool_calls"] = calls
    out["done"] = True
    out["done_reason"] = final["done_reason"]
    if logprobs and target == "chat":
        out["logprobs"] = logprobs  # ChatResponse puts logprobs before the metrics, GenerateResponse after
    out.update((key, final[key]) for key in METRIC_KEYS)
    if logprobs and target == "generate":
        out["logprobs"] = logprobs
    return out


def final_chunk(model: str, created_at: str, target: Target, done_reason: str) -> dict[str, Any]:
    if target == "chat":
        return {
            "model": model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": done_reason,
        }
    return {"model": model, "created_at": created_at, "response": "", "done": True, "done_reason": done_reason}


def load_response(model: str, created_at: str, target: Target, unload: bool) -> dict[str, Any]:
    """The answer to an empty prompt / empty messages: Ollama loads (or unloads) and says so."""
    return final_chunk(model, created_at, target, "unload" if unload else "load")
