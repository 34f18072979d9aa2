"""An in-process stand-in for vLLM's OpenAI server, faithful to what real vLLM 0.32 sends.

Streams: a role chunk (`content: ""`), content chunks, the finish reason riding on the last token
at the length limit or a separate `delta: {}` chunk at end of sequence, a `choices: []` usage chunk
when asked, then `data: [DONE]`. Validation errors come back as plain JSON in vLLM's shape.

Tests steer it through `VLLMStandin.script` and read `requests` (what reached the upstream) and
`cancelled` / `active` (streams the gateway abandoned or still holds).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Script:
    """What the next requests get. Defaults: an echo-ish reply, no delay."""

    tokens: list[str] | None = None  # None: "Hello from <model>!" split in tokens
    delay: float = 0.0  # seconds before each token
    first_delay: float = 0.0  # seconds to the first event (vLLM sends its role chunk with the first token)
    finish_reason: str = "stop"  # at the end of `tokens` (max_tokens may make it "length")
    tool_calls: list[dict[str, Any]] | None = None  # [{"name":..., "arguments": "<json>"}]
    tool_fragments: int = 3  # how many pieces each call's arguments are streamed in
    tool_finish_reason: str = "tool_calls"
    reasoning: list[str] | None = None  # reasoning deltas before the content
    reasoning_field: str = "reasoning"  # or "reasoning_content" (older vLLM)
    error_status: int | None = None  # answer with this status and error_message
    error_message: str = "boom"
    die_after: int | None = None  # close the connection after this many content chunks
    error_event_after: int | None = None  # send a `data: {"error": ...}` event after N chunks
    garbage: bytes | None = None  # send this body (status 200, SSE content type) instead


@dataclass
class VLLMStandin:
    models: list[str] = field(default_factory=lambda: ["tiny"])
    max_model_len: int = 2048
    script: Script = field(default_factory=Script)
    requests: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    cancelled: int = 0
    completed: int = 0
    healthy: bool = True

    def reset(self) -> None:
        self.script = Script()
        self.max_model_len = 2048
        self.requests.clear()
        self.cancelled = self.completed = 0

    # ---- helpers ---------------------------------------------------------------------------

    def _error(self, status: int, message: str, param: str | None = None, kind: str = "BadRequestError") -> Response:
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    def _validate(self, body: dict[str, Any], chat: bool) -> Response | None:
        if self.script.error_status:
            return self._error(self.script.error_status, self.script.error_message)
        if body.get("tools") == []:
            return self._error(400, "tools must not be an empty array", "tools")
        if body.get("stream_options") is not None and not body.get("stream"):
            return self._error(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        model = body.get("model")
        if model is not None and model not in self.models:
            return self._error(
                404,
                f"The model `{model}` does not exist. Valid aliases: {', '.join(self.models)}.",
                "model",
                "NotFoundError",
            )
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and max_tokens < 1:
            return self._error(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        if chat and not body.get("messages"):
            return self._error(
                400,
                "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages'}",
                "body.messages",
                "Bad Request",
            )
        if not chat and not body.get("prompt"):
            return self._error(400, "Prompt cannot be empty", "prompt")
        rp = body.get("repetition_penalty")
        if rp is not None and rp <= 0:
            return self._error(400, "repetition_penalty must be greater than zero", "repetition_penalty")
        prompt_tokens = self._prompt_tokens(body)
        if prompt_tokens > self.max_model_len:
            return self._error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt contains "
                f"at least {prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
                f"Please reduce the length of the input prompt. (parameter=input_tokens, value={prompt_tokens})",
                "input_tokens",
            )
        return None

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        if "messages" in body:
            text = " ".join(
                m["content"]
                if isinstance(m.get("content"), str)
                else " ".join(p.get("text", "x") for p in m.get("content") or [])
                for m in body["messages"]
            )
        else:
            text = body.get("prompt") or ""
        return len(text.split()) + 3

    def _tokens(self, body: dict[str, Any]) -> tuple[list[str], str]:
        tokens = (
            list(self.script.tokens)
            if self.script.tokens is not None
            else ["Hello", " from", f" {body.get('model')}", "!"]
        )
        finish = self.script.finish_reason
        stops = body.get("stop") or []
        if stops:
            text = ""
            for i, tok in enumerate(tokens):
                for stop in stops:
                    if stop in text + tok:
                        tokens = tokens[:i]
                        return tokens, "stop"
                text += tok
        limit = body.get("max_tokens")
        if limit is not None and limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, finish

    # ---- endpoints -------------------------------------------------------------------------

    async def models_endpoint(self, request: Request) -> Response:
        now = int(time.time())
        data = [
            {
                "id": m,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": f"/models/{m}",
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [],
            }
            for m in self.models
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def health(self, request: Request) -> Response:
        return Response(b"", status_code=200 if self.healthy else 503)

    async def completions(self, request: Request) -> Response:
        chat = request.url.path.endswith("/chat/completions")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return self._error(400, "JSON decode error", "body", "Bad Request")
        self.requests.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        problem = self._validate(body, chat)
        if problem is not None:
            return problem
        if self.script.garbage is not None:
            return Response(self.script.garbage, media_type="text/event-stream")
        if body.get("stream"):
            return StreamingResponse(self._stream(body, chat, request), media_type="text/event-stream; charset=utf-8")
        return await self._whole(body, chat, request)

    async def _whole(self, body: dict[str, Any], chat: bool, request: Request) -> Response:
        tokens, finish = self._tokens(body)
        self.active += 1
        # Like vLLM's `with_cancellation`: a client that leaves aborts the request.
        work = asyncio.ensure_future(asyncio.sleep(self.script.first_delay + self.script.delay * len(tokens)))

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.active -= 1
            watch.cancel()
        if not work.done():
            work.cancel()
            self.cancelled += 1
            return Response(b"", status_code=499)
        text = "".join(tokens)
        usage = {"prompt_tokens": self._prompt_tokens(body), "total_tokens": 0, "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "reasoning": None}
            if self.script.reasoning:
                message[self.script.reasoning_field] = "".join(self.script.reasoning)
            if self.script.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": f"chatcmpl-tool-{i:016x}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for i, c in enumerate(self.script.tool_calls)
                ]
                finish = self.script.tool_finish_reason
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
            obj = "text_completion"
        self.completed += 1
        resp = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": obj,
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": usage,
        }
        return Response(orjson.dumps(resp), media_type="application/json")

    async def _stream(self, body: dict[str, Any], chat: bool, request: Request):  # type: ignore[no-untyped-def]
        script = self.script
        tokens, finish = self._tokens(body)
        cid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {
                "id": cid,
                "object": obj,
                "created": created,
                "model": body.get("model"),
                "choices": choices,
                **extra,
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        def piece(delta: dict[str, Any] | None, text: str = "", finish_reason: str | None = None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

        self.active += 1
        finished = False
        try:
            if script.first_delay:
                await asyncio.sleep(script.first_delay)
            if chat:
                yield event([piece({"role": "assistant", "content": ""})])
            for r in script.reasoning or []:
                if script.delay:
                    await asyncio.sleep(script.delay)
                yield event([piece({script.reasoning_field: r})])
            sent = 0
            for i, tok in enumerate(tokens):
                if script.delay:
                    await asyncio.sleep(script.delay)
                if script.die_after is not None and sent >= script.die_after:
                    raise ConnectionAbortedError("stand-in dies mid-stream")
                if script.error_event_after is not None and sent >= script.error_event_after:
                    yield (
                        b"data: "
                        + orjson.dumps(
                            {"error": {"message": "engine failure", "type": "InternalServerError", "code": 500}}
                        )
                        + b"\n\n"
                    )
                    finished = True
                    return
                last = i == len(tokens) - 1
                rides = finish if (last and finish == "length" and not script.tool_calls) else None
                yield event([piece({"content": tok}, tok, rides)])
                sent += 1
            if script.tool_calls and chat:
                for n, call in enumerate(script.tool_calls):
                    yield event(
                        [
                            piece(
                                {
                                    "content": None,
                                    "tool_calls": [
                                        {
                                            "id": f"chatcmpl-tool-{n:016x}",
                                            "type": "function",
                                            "index": n,
                                            "function": {"name": call["name"]},
                                        }
                                    ],
                                }
                            )
                        ]
                    )
                    args = call["arguments"]
                    size = max(1, -(-len(args) // max(script.tool_fragments, 1)))
                    for start in range(0, len(args), size):
                        yield event(
                            [
                                piece(
                                    {
                                        "content": None,
                                        "tool_calls": [
                                            {"index": n, "function": {"arguments": args[start : start + size]}}
                                        ],
                                    }
                                )
                            ]
                        )
                yield event([piece({}, "", script.tool_finish_reason)])
            elif finish != "length" or not tokens:
                yield event([piece({}, "", finish)], stop_reason=0)
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = self._prompt_tokens(body)
                calls = len(script.tool_calls or []) * 8
                yield event(
                    [],
                    usage={
                        "prompt_tokens": prompt,
                        "total_tokens": prompt + len(tokens) + calls,
                        "completion_tokens": len(tokens) + calls,
                    },
                )
            yield b"data: [DONE]\n\n"
            finished = True
            self.completed += 1
        finally:
            self.active -= 1
            if not finished:
                self.cancelled += 1

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize for chat messages: {count, max_model_len, tokens}."""
        body = orjson.loads(await request.body())
        self.requests.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        count = self._prompt_tokens(body)
        answer = {"count": count, "max_model_len": self.max_model_len, "tokens": list(range(count)), "token_strs": None}
        return Response(orjson.dumps(answer), media_type="application/json")

    async def anthropic_messages(self, request: Request) -> Response:
        """vLLM's native Anthropic Messages API, as 0.32 answers it (streamed: Anthropic's events)."""
        body = orjson.loads(await request.body())
        self.requests.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        if self.script.error_status:
            return self._error(self.script.error_status, self.script.error_message)
        tokens, _ = self._tokens(body)
        if request.url.path.endswith("/count_tokens"):
            prompt = self._prompt_tokens(body)
            answer = {"input_tokens": prompt, "context_management": {"original_input_tokens": prompt}}
            return Response(orjson.dumps(answer), media_type="application/json")
        message = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "".join(tokens)}],
            "model": body.get("model"),
            "stop_reason": "end_turn",
            "usage": {"input_tokens": self._prompt_tokens(body), "output_tokens": len(tokens)},
        }
        if not body.get("stream"):
            return Response(orjson.dumps(message), media_type="application/json")

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

        async def events():  # type: ignore[no-untyped-def]
            yield event("message_start", {"message": {**message, "content": []}})
            yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            for tok in tokens:
                yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": tok}})
            yield event("content_block_stop", {"index": 0})
            yield event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": message["usage"]})
            yield event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream; charset=utf-8")

    async def responses(self, request: Request) -> Response:
        """vLLM's native OpenAI Responses API (non-streamed shape)."""
        body = orjson.loads(await request.body())
        self.requests.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        text = "".join(self._tokens(body)[0])
        answer = {
            "id": f"resp_{uuid.uuid4().hex[:16]}",
            "object": "response",
            "model": body.get("model"),
            "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.models_endpoint, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/tokenize", self.tokenize, methods=["POST"]),
                Route("/v1/messages", self.anthropic_messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.anthropic_messages, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
            ]
        )
