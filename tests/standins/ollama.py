"""An in-process stand-in for a real Ollama ("Ollama Vision"): vision chat, embeddings, management.

Answers in Ollama's own wire format (NDJSON streams, `{"error": ...}` bodies) and records every
request so tests can assert what reached which upstream.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

NOW = "2026-11-20T10:00:00.123456789+01:00"


def _details(family: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "7B",
        "quantization_level": "Q4_0",
    }


@dataclass
class OllamaStandin:
    models: dict[str, str] = field(
        default_factory=lambda: {"llava:7b": "llava", "nomic-embed-text:latest": "nomic-bert"}
    )
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0
    cancelled: int = 0

    def reset(self) -> None:
        self.requests.clear()
        self.delay = 0.0
        self.cancelled = 0

    def _json(self, obj: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(obj), status_code=status, media_type="application/json; charset=utf-8")

    def _find(self, name: str | None) -> str | None:
        if not name:
            return None
        # Ollama looks names up case-insensitively, `:latest` implied.
        wanted = name.lower().removesuffix(":latest")
        for m in self.models:
            if m.lower().removesuffix(":latest") == wanted:
                return m
        return None

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        record = {"path": request.url.path, "method": request.method, "body": body, "headers": dict(request.headers)}
        self.requests.append(record)
        return body

    async def tags(self, request: Request) -> Response:
        return self._json(
            {
                "models": [
                    {
                        "name": m,
                        "model": m,
                        "modified_at": NOW,
                        "size": 4_000_000_000,
                        "digest": "a" * 64,
                        "details": _details(f),
                    }
                    for m, f in self.models.items()
                ]
            }
        )

    async def ps(self, request: Request) -> Response:
        return self._json(
            {
                "models": [
                    {
                        "name": "llava:7b",
                        "model": "llava:7b",
                        "size": 5_000_000_000,
                        "digest": "a" * 64,
                        "details": _details("llava"),
                        "expires_at": NOW,
                        "size_vram": 5_000_000_000,
                        "context_length": 4096,
                    }
                ]
            }
        )

    async def version(self, request: Request) -> Response:
        return self._json({"version": "0.12.3"})

    async def show(self, request: Request) -> Response:
        body = await self._record(request)
        model = self._find(body.get("model") or body.get("name"))
        if model is None:
            return self._json({"error": f"model '{body.get('model')}' not found"}, 404)
        family = self.models[model]
        caps = ["embedding"] if "embed" in model else ["completion", "vision"]
        return self._json(
            {
                "modelfile": "FROM x",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": _details(family),
                "model_info": {"general.architecture": family, f"{family}.context_length": 4096},
                "capabilities": caps,
                "modified_at": NOW,
            }
        )

    async def chat_or_generate(self, request: Request) -> Response:
        body = await self._record(request)
        model = self._find(body.get("model"))
        if model is None:
            return self._json({"error": f'model "{body.get("model")}" not found, try pulling it first'}, 404)
        chat = request.url.path == "/api/chat"
        words = ["I", " see", " a", " cat"]

        def chunk(text: str, done: bool) -> dict[str, Any]:
            base: dict[str, Any] = {"model": body["model"], "created_at": "2026-11-23T10:00:00.5Z"}
            if chat:
                base["message"] = {"role": "assistant", "content": text}
            else:
                base["response"] = text
            base["done"] = done
            if done:
                base.update(
                    done_reason="stop",
                    total_duration=1000,
                    load_duration=10,
                    prompt_eval_count=5,
                    prompt_eval_duration=100,
                    eval_count=4,
                    eval_duration=800,
                )
            return base

        if body.get("stream") is False:
            whole = chunk("".join(words), True)
            return self._json(whole)

        async def lines():  # type: ignore[no-untyped-def]
            finished = False
            try:
                for w in words:
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    yield orjson.dumps(chunk(w, False)) + b"\n"
                yield orjson.dumps(chunk("", True)) + b"\n"
                finished = True
            finally:
                if not finished:
                    self.cancelled += 1

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def embed(self, request: Request) -> Response:
        body = await self._record(request)
        if self._find(body.get("model")) is None:
            return self._json({"error": f'model "{body.get("model")}" not found, try pulling it first'}, 404)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs or []
        return self._json(
            {
                "model": body["model"],
                "embeddings": [[0.6, 0.8, 0.0] for _ in inputs],
                "total_duration": 1000,
                "load_duration": 10,
                "prompt_eval_count": len(inputs),
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        if self._find(body.get("model")) is None:
            return self._json({"error": f'model "{body.get("model")}" not found, try pulling it first'}, 404)
        return self._json({"embedding": [0.1, 0.2, 0.3]})

    async def pull(self, request: Request) -> Response:
        body = await self._record(request)
        name = body.get("model") or body.get("name")

        async def lines():  # type: ignore[no-untyped-def]
            yield b'{"status":"pulling manifest"}\n'
            yield b'{"status":"pulling abc","digest":"sha256:abc","total":100,"completed":100}\n'
            self.models[name if ":" in name else f"{name}:latest"] = "llama"
            yield b'{"status":"success"}\n'

        if body.get("stream") is False:
            self.models[name if ":" in name else f"{name}:latest"] = "llama"
            return self._json({"status": "success"})
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def delete(self, request: Request) -> Response:
        body = await self._record(request)
        model = self._find(body.get("model") or body.get("name"))
        if model is None:
            return self._json({"error": f"model '{body.get('model') or body.get('name')}' not found"}, 404)
        del self.models[model]
        return Response(b"", status_code=200)

    async def copy(self, request: Request) -> Response:
        body = await self._record(request)
        model = self._find(body.get("source"))
        if model is None:
            return self._json({"error": f'model "{body.get("source")}" not found'}, 404)
        self.models[body["destination"]] = self.models[model]
        return Response(b"", status_code=200)

    async def create_or_push(self, request: Request) -> Response:
        await self._record(request)
        return StreamingResponse(
            iter([b'{"status":"reading model metadata"}\n', b'{"status":"success"}\n']),
            media_type="application/x-ndjson",
        )

    async def blobs(self, request: Request) -> Response:
        if request.method == "HEAD":
            return Response(b"", status_code=404)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        record = {"path": request.url.path, "method": "POST", "body": {"size": size}, "headers": dict(request.headers)}
        self.requests.append(record)
        return Response(b"", status_code=201)

    async def openai_embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        return self._json(
            {
                "object": "list",
                "model": body.get("model"),
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
                "data": [{"object": "embedding", "embedding": [0.1, 0.2], "index": i} for i, _ in enumerate(inputs)],
            }
        )

    async def openai_chat(self, request: Request) -> Response:
        body = await self._record(request)
        resp = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "system_fingerprint": "fp_ollama",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "I see a cat"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }
        return self._json(resp)

    async def anthropic_messages(self, request: Request) -> Response:
        body = await self._record(request)
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": "I see a cat"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 4},
        }
        return self._json(message)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", lambda r: Response(b"Ollama is running", media_type="text/plain")),
                Route("/api/version", self.version),
                Route("/api/tags", self.tags),
                Route("/api/ps", self.ps),
                Route("/api/show", self.show, methods=["POST"]),
                Route("/api/chat", self.chat_or_generate, methods=["POST"]),
                Route("/api/generate", self.chat_or_generate, methods=["POST"]),
                Route("/api/embed", self.embed, methods=["POST"]),
                Route("/api/embeddings", self.embeddings, methods=["POST"]),
                Route("/api/pull", self.pull, methods=["POST"]),
                Route("/api/push", self.create_or_push, methods=["POST"]),
                Route("/api/create", self.create_or_push, methods=["POST"]),
                Route("/api/copy", self.copy, methods=["POST"]),
                Route("/api/delete", self.delete, methods=["DELETE"]),
                Route("/api/blobs/{digest}", self.blobs, methods=["HEAD", "POST"]),
                Route("/v1/embeddings", self.openai_embeddings, methods=["POST"]),
                Route("/v1/chat/completions", self.openai_chat, methods=["POST"]),
                Route("/v1/messages", self.anthropic_messages, methods=["POST"]),
            ]
        )
