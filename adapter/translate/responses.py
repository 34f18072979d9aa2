"""OpenAI (vLLM) responses and stream chunks -> Ollama responses and NDJSON chunks. Pure.

Clock readings are passed in by the caller; nothing here does I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from adapter.translate.tools import ToolCallAccumulator, ToolCallError, openai_tool_calls_to_ollama

Target = Literal["chat", "generate"]

# vLLM finish_reason -> Ollama done_reason. Ollama only knows stop/length (tool calls end with "stop").
DONE_REASONS: dict[str, str] = {"length": "length"}


def done_reason_for(finish_reason: str | None) -> str:
    return DONE_REASONS.get(finish_reason or "stop", "stop")


class UpstreamStreamError(Exception):
    """vLLM sent an error event inside a 200 stream, or a stream Ollama clients cannot be given."""


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


def final_metrics(timing: Timing, usage: dict[str, Any] | None) -> dict[str, int]:
    """Ollama's final-chunk statistics, in its key order. Counts from vLLM's usage; durations in ns."""
    end = timing.end or timing.start
    upstream = timing.upstream or timing.start
    first = timing.first or end
    usage = usage or {}
    metrics = {
        "total_duration": max(end - timing.start, 0),
        "load_duration": max(upstream - timing.start, 0),
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        "prompt_eval_duration": max(first - upstream, 0),
        "eval_count": int(usage.get("completion_tokens") or 0),
        "eval_duration": max(end - first, 0),
    }
    return metrics


def chat_logprobs_to_ollama(logprobs: Any) -> list[dict[str, Any]]:
    if not isinstance(logprobs, dict):
        return []
    out = []
    for item in logprobs.get("content") or ():
        entry: dict[str, Any] = {"token": item.get("token", ""), "logprob": item.get("logprob", 0.0)}
        if item.get("bytes") is not None:
            entry["bytes"] = item["bytes"]
        top = item.get("top_logprobs")
        if top:
            entry["top_logprobs"] = [
                {
                    "token": t.get("token", ""),
                    "logprob": t.get("logprob", 0.0),
                    **({"bytes": t["bytes"]} if t.get("bytes") else {}),
                }
                for t in top
            ]
        out.append(entry)
    return out


def completion_logprobs_to_ollama(logprobs: Any) -> list[dict[str, Any]]:
    if not isinstance(logprobs, dict):
        return []
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    out = []
    for i, token in enumerate(tokens):
        entry: dict[str, Any] = {
            "token": token,
            "logprob": values[i] if i < len(values) and values[i] is not None else 0.0,
        }
        if i < len(tops) and tops[i]:
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


class StreamTranslator:
    """vLLM stream chunks (chat or completions) -> Ollama chunks for /api/chat or /api/generate.

    State is what Ollama's final chunk needs: finish reason, usage, tool calls still being assembled.
    """

    __slots__ = ("finish_reason", "logprobs", "model", "produced", "target", "tools", "usage")

    def __init__(self, model: str, target: Target, logprobs: bool = False) -> None:
        self.model = model
        self.target = target
        self.logprobs = logprobs
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.tools = ToolCallAccumulator()
        self.produced = 0  # chunks that carried generated output

    def feed(self, chunk: dict[str, Any], created_at: str) -> list[dict[str, Any]]:
        """One upstream chunk -> zero or more Ollama chunks (never the final one)."""
        if "error" in chunk and not chunk.get("choices"):
            raise UpstreamStreamError(error_message_of(chunk))
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return []
        choice = choices[0]
        delta = choice.get("delta")
        if delta is not None:  # chat.completion.chunk
            text = delta.get("content") or ""
            thinking = delta.get("reasoning") or delta.get("reasoning_content")
            tool_deltas = delta.get("tool_calls")
            if tool_deltas:
                self.tools.add(tool_deltas)
        else:  # text_completion
            text = choice.get("text") or ""
            thinking = None
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
            self.finish_reason = finish
            if self.tools:
                out.extend(self._flush_tools(created_at))
        self.produced += len(out)
        return out

    def _flush_tools(self, created_at: str) -> list[dict[str, Any]]:
        try:
            calls, text = self.tools.flush(truncated=self.finish_reason == "length")
        except ToolCallError as exc:
            raise UpstreamStreamError(str(exc)) from None
        out = []
        if calls:
            chunk = _chunk(self.model, created_at, self.target, "", None)
            if self.target == "chat":
                chunk["message"]["tool_calls"] = calls
            else:
                chunk["tool_calls"] = calls
            out.append(chunk)
        if text:
            out.append(_chunk(self.model, created_at, self.target, text, None))
        return out

    def final(self, created_at: str, timing: Timing) -> list[dict[str, Any]]:
        """What ends the stream: any tool calls never flushed (no finish_reason seen), then the
        `done: true` chunk with Ollama's statistics."""
        out = self._flush_tools(created_at) if self.tools else []
        done = final_chunk(self.model, created_at, self.target, done_reason_for(self.finish_reason))
        done.update(final_metrics(timing, self.usage))
        out.append(done)
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


def openai_response_to_ollama(
    resp: dict[str, Any], model: str, target: Target, created_at: str, timing: Timing, logprobs: bool = False
) -> dict[str, Any]:
    """A whole (non-streamed) chat.completion or text_completion -> one Ollama response object."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] or {}
    message = choice.get("message")
    tool_calls: list[dict[str, Any]] = []
    if message is not None:
        text = message.get("content") or ""
        thinking = message.get("reasoning") or message.get("reasoning_content")
        raw_calls = message.get("tool_calls") or []
        if raw_calls:
            try:
                tool_calls = openai_tool_calls_to_ollama(raw_calls)
            except ToolCallError as exc:
                if choice.get("finish_reason") == "length":
                    raise UpstreamStreamError(f"{exc} (the call was cut off by the token limit)") from None
                accumulator = ToolCallAccumulator()
                accumulator.add(raw_calls)
                tool_calls, extra_text = accumulator.flush(truncated=False)
                text += extra_text
        lp = chat_logprobs_to_ollama(choice.get("logprobs")) if logprobs else []
    else:
        text = choice.get("text") or ""
        thinking = None
        lp = completion_logprobs_to_ollama(choice.get("logprobs")) if logprobs else []
    out = _chunk(model, created_at, target, text, thinking)
    if tool_calls:
        if target == "chat":
            out["message"]["tool_calls"] = tool_calls
        else:
            out["tool_calls"] = tool_calls
    out["done"] = True
    out["done_reason"] = done_reason_for(choice.get("finish_reason"))
    if timing.first:
        metrics = final_metrics(timing, resp.get("usage"))
    else:
        # A whole response gives no first-token time, so prefill cannot be told from decoding: the
        # upstream time counts as eval time, and the unknown prompt_eval_duration is omitted, as
        # Ollama omits zero durations.
        upstream = timing.upstream or timing.start
        metrics = final_metrics(Timing(timing.start, upstream, upstream, timing.end), resp.get("usage"))
        metrics.pop("prompt_eval_duration")
    if lp and target == "chat":
        out["logprobs"] = lp  # ChatResponse puts logprobs before the metrics, GenerateResponse after
    out.update(metrics)
    if lp and target == "generate":
        out["logprobs"] = lp
    return out
