"""Python clients, each used exactly as its users use it, against the running gateway.

Upstreams are the in-process stand-ins: vLLM (`tiny`, scripted per test for tool calls, JSON,
reasoning) and Ollama Vision (`llava:7b`, `nomic-embed-text:latest`). Every test checks what the
client sees AND what reached the upstream. tests/clients/CONFORMANCE.md maps these tests to the
README's client x feature table.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import ollama
import openai
import pytest

from tests.clients.conftest import (
    PNG,
    PNG_B64,
    WEATHER_TOOL,
    Person,
    assert_schema_forwarded,
    assert_thinking_requested,
    last_vision,
    last_vllm,
    person_json,
    reasoning,
    tool_names,
    weather_call,
)
from tests.standins.ollama import OllamaStandin
from tests.standins.vllm import Script, VLLMStandin

# The framework clients are test dependencies (pyproject `test` extra). Without them only their tests
# skip, loudly, and the ollama/openai rows still run.
try:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
except ImportError as exc:
    LANGCHAIN_MISSING: str | None = f"{exc}"
else:
    LANGCHAIN_MISSING = None
try:
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, ThinkingBlock
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.ollama import Ollama as LlamaIndexOllama
except ImportError as exc:
    LLAMAINDEX_MISSING: str | None = f"{exc}"
else:
    LLAMAINDEX_MISSING = None

pytestmark = pytest.mark.clients
needs_langchain = pytest.mark.skipif(
    LANGCHAIN_MISSING is not None,
    reason=f"CLIENT MATRIX INCOMPLETE: langchain-ollama not installed ({LANGCHAIN_MISSING}); pip install -e '.[test]'",
)
needs_llamaindex = pytest.mark.skipif(
    LLAMAINDEX_MISSING is not None,
    reason=f"CLIENT MATRIX INCOMPLETE: llama-index-llms-ollama not installed ({LLAMAINDEX_MISSING}); "
    "pip install -e '.[test]'",
)

USER = {"role": "user", "content": "What is the weather in Paris?"}


def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city
    """
    return f"18C and sunny in {city}"


def assert_tool_round_trip(sent: list[dict[str, Any]]) -> None:
    """The second turn reached vLLM in OpenAI's shape: the assistant's call with a JSON-string
    argument and an id, and the tool result bound to that id."""
    assistant = next(m for m in sent if m["role"] == "assistant")
    tool_msg = next(m for m in sent if m["role"] == "tool")
    call = assistant["tool_calls"][0]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert tool_msg["tool_call_id"] == call["id"]
    assert "18C" in tool_msg["content"]


# ---- ollama (official Python client), sync ------------------------------------------------------


def test_ollama_sync_list_and_show(gateway: str) -> None:
    c = ollama.Client(host=gateway)
    names = [m.model for m in c.list().models]
    for expected in ("tiny:latest", "Qwen/Qwen2.5-7B-Instruct:latest", "llava:7b", "nomic-embed-text:latest"):
        assert expected in names, names
    shown = c.show("tiny")
    arch = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{arch}.context_length"] == 2048
    assert shown.modelinfo["general.context_length"] == 2048
    assert {"completion", "tools"} <= set(shown.capabilities or [])
    assert "vision" in (c.show("llava:7b").capabilities or [])
    assert "embedding" in (c.show("nomic-embed-text").capabilities or [])


def test_ollama_sync_chat(gateway: str, vllm: VLLMStandin) -> None:
    resp = ollama.Client(host=gateway).chat(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert resp.message.role == "assistant" and resp.message.content == "Hello from tiny!"
    assert resp.done and resp.done_reason == "stop" and resp.eval_count == 4
    body = last_vllm(vllm)
    assert body["model"] == "tiny" and body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "tools" not in body  # the client sends "tools": [], which vLLM rejects


def test_ollama_sync_generate(gateway: str, vllm: VLLMStandin) -> None:
    resp = ollama.Client(host=gateway).generate(model="tiny", prompt="Why is the sky blue?")
    assert resp.response == "Hello from tiny!" and resp.done and resp.done_reason == "stop"
    assert last_vllm(vllm)["messages"][-1] == {"role": "user", "content": "Why is the sky blue?"}


def test_ollama_sync_stream(gateway: str, vllm: VLLMStandin) -> None:
    c = ollama.Client(host=gateway)
    parts = list(c.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "".join(p.message.content for p in parts) == "Hello from tiny!"
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert last_vllm(vllm)["stream"] is True
    gen = list(c.generate(model="tiny", prompt="Hi", stream=True))
    assert "".join(p.response for p in gen) == "Hello from tiny!" and gen[-1].done


def test_ollama_sync_tools(gateway: str, vllm: VLLMStandin) -> None:
    c = ollama.Client(host=gateway)
    vllm.script = weather_call()
    resp = c.chat(model="tiny", messages=[USER], tools=[WEATHER_TOOL])
    (call,) = resp.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris"}  # an object, never a JSON string
    assert resp.done_reason == "stop"  # Ollama says "stop" even when tools were called
    assert last_vllm(vllm)["tools"] == [WEATHER_TOOL]

    # Streamed, with a Python function as the tool: the call arrives whole in one chunk.
    vllm.script = weather_call()
    parts = list(c.chat(model="tiny", messages=[USER], tools=[get_weather], stream=True))
    calls = [tc for p in parts for tc in (p.message.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [("get_weather", {"city": "Paris"})]
    assert parts[-1].done
    assert tool_names(last_vllm(vllm)) == ["get_weather"]

    # The result goes back (no tool_call_id, as most Ollama users send it) and the model answers.
    vllm.script = Script(tokens=["It is sunny."])
    history = [USER, resp.message, {"role": "tool", "content": get_weather("Paris"), "tool_name": "get_weather"}]
    final = c.chat(model="tiny", messages=history, tools=[WEATHER_TOOL])
    assert final.message.content == "It is sunny."
    assert_tool_round_trip(last_vllm(vllm)["messages"])


def test_ollama_sync_structured_output(gateway: str, vllm: VLLMStandin) -> None:
    c = ollama.Client(host=gateway)
    vllm.script = person_json()
    resp = c.chat(model="tiny", messages=[{"role": "user", "content": "Who?"}], format=Person.model_json_schema())
    assert Person.model_validate_json(resp.message.content or "") == Person(name="Ann", age=3)
    assert_schema_forwarded(last_vllm(vllm), {"name", "age"})

    vllm.script = person_json()
    gen = c.generate(model="tiny", prompt="Who? Answer in JSON.", format="json")
    assert json.loads(gen.response or "") == {"name": "Ann", "age": 3}
    assert last_vllm(vllm)["response_format"] == {"type": "json_object"}


def test_ollama_sync_thinking(gateway: str, vllm: VLLMStandin) -> None:
    c = ollama.Client(host=gateway)
    vllm.script = reasoning()
    resp = c.chat(model="tiny", messages=[{"role": "user", "content": "6*7?"}], think=True)
    assert resp.message.thinking == "Let me think"
    assert resp.message.content == "Forty-two"
    assert_thinking_requested(last_vllm(vllm))

    vllm.script = reasoning()
    parts = list(c.chat(model="tiny", messages=[{"role": "user", "content": "6*7?"}], think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think"
    assert "".join(p.message.content for p in parts) == "Forty-two"

    vllm.script = reasoning()
    gen = c.generate(model="tiny", prompt="6*7?", think=True)
    assert gen.thinking == "Let me think" and gen.response == "Forty-two"


def test_ollama_sync_embeddings(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    c = ollama.Client(host=gateway)
    resp = c.embed(model="nomic-embed-text", input=["first", "second"])
    assert resp.embeddings == [pytest.approx([0.6, 0.8, 0.0])] * 2
    assert last_vision(vision, "/api/embed")["input"] == ["first", "second"]
    legacy = c.embeddings(model="nomic-embed-text", prompt="first")
    assert legacy.embedding == pytest.approx([0.1, 0.2, 0.3])
    assert last_vision(vision, "/api/embeddings")["prompt"] == "first"
    assert vllm.requests == []


def test_ollama_sync_vision(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    c = ollama.Client(host=gateway)
    resp = c.chat(model="llava:7b", messages=[{"role": "user", "content": "What is this?", "images": [PNG]}])
    assert resp.message.content == "I see a cat" and resp.done
    sent = last_vision(vision, "/api/chat")
    assert sent["model"] == "llava:7b" and sent["messages"][0]["images"] == [PNG_B64]
    gen = c.generate(model="llava:7b", prompt="What is this?", images=[PNG])
    assert gen.response == "I see a cat"
    assert last_vision(vision, "/api/generate")["images"] == [PNG_B64]
    assert vllm.requests == []


# ---- ollama.AsyncClient --------------------------------------------------------------------------


def test_ollama_async_list(gateway: str) -> None:
    async def go() -> list[str]:
        async with ollama.AsyncClient(host=gateway) as c:
            return [m.model or "" for m in (await c.list()).models]

    names = asyncio.run(go())
    assert {"tiny:latest", "llava:7b", "nomic-embed-text:latest"} <= set(names)


def test_ollama_async_chat(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> ollama.ChatResponse:
        async with ollama.AsyncClient(host=gateway) as c:
            return await c.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}])

    resp = asyncio.run(go())
    assert resp.message.content == "Hello from tiny!" and resp.done_reason == "stop"
    assert resp.prompt_eval_duration and resp.prompt_eval_duration > 0
    assert last_vllm(vllm)["stream"] is True  # folded by the gateway into one answer


def test_ollama_async_generate(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> ollama.GenerateResponse:
        async with ollama.AsyncClient(host=gateway) as c:
            return await c.generate(model="tiny", prompt="Why?", system="Be brief")

    assert asyncio.run(go()).response == "Hello from tiny!"
    assert last_vllm(vllm)["messages"][0] == {"role": "system", "content": "Be brief"}


def test_ollama_async_stream(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> tuple[list[ollama.ChatResponse], list[ollama.GenerateResponse]]:
        async with ollama.AsyncClient(host=gateway) as c:
            chat = [
                p async for p in await c.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True)
            ]
            gen = [p async for p in await c.generate(model="tiny", prompt="Hi", stream=True)]
            return chat, gen

    chat, gen = asyncio.run(go())
    assert "".join(p.message.content or "" for p in chat) == "Hello from tiny!" and chat[-1].done
    assert "".join(p.response for p in gen) == "Hello from tiny!" and gen[-1].done


def test_ollama_async_tools(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> list[ollama.ChatResponse]:
        async with ollama.AsyncClient(host=gateway) as c:
            stream = await c.chat(model="tiny", messages=[USER], tools=[WEATHER_TOOL], stream=True)
            return [p async for p in stream]

    vllm.script = weather_call()
    parts = asyncio.run(go())
    calls = [tc for p in parts for tc in (p.message.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [("get_weather", {"city": "Paris"})]
    assert last_vllm(vllm)["tools"] == [WEATHER_TOOL]


def test_ollama_async_structured_output(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> ollama.ChatResponse:
        async with ollama.AsyncClient(host=gateway) as c:
            return await c.chat(
                model="tiny", messages=[{"role": "user", "content": "Who?"}], format=Person.model_json_schema()
            )

    vllm.script = person_json()
    assert Person.model_validate_json(asyncio.run(go()).message.content or "") == Person(name="Ann", age=3)
    assert_schema_forwarded(last_vllm(vllm), {"name", "age"})


def test_ollama_async_thinking(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> list[ollama.ChatResponse]:
        async with ollama.AsyncClient(host=gateway) as c:
            stream = await c.chat(model="tiny", messages=[{"role": "user", "content": "6*7?"}], think=True, stream=True)
            return [p async for p in stream]

    vllm.script = reasoning()
    parts = asyncio.run(go())
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think"
    assert "".join(p.message.content or "" for p in parts) == "Forty-two"
    assert_thinking_requested(last_vllm(vllm))


def test_ollama_async_embeddings(gateway: str, vision: OllamaStandin) -> None:
    async def go() -> ollama.EmbedResponse:
        async with ollama.AsyncClient(host=gateway) as c:
            return await c.embed(model="nomic-embed-text", input="hello")

    assert asyncio.run(go()).embeddings == [pytest.approx([0.6, 0.8, 0.0])]
    assert last_vision(vision, "/api/embed")["input"] == "hello"


def test_ollama_async_vision(gateway: str, vision: OllamaStandin) -> None:
    async def go() -> list[ollama.ChatResponse]:
        async with ollama.AsyncClient(host=gateway) as c:
            msgs = [{"role": "user", "content": "What is this?", "images": [PNG]}]
            return [p async for p in await c.chat(model="llava:7b", messages=msgs, stream=True)]

    parts = asyncio.run(go())
    assert "".join(p.message.content or "" for p in parts) == "I see a cat" and parts[-1].done
    assert last_vision(vision, "/api/chat")["messages"][0]["images"] == [PNG_B64]


# ---- LangChain: ChatOllama, OllamaLLM, OllamaEmbeddings (langchain-ollama) ------------------------


@needs_langchain
def test_langchain_list_validates_model(gateway: str) -> None:
    # validate_model_on_init lists /api/tags and needs `tiny` or a `tiny:<tag>` there.
    ChatOllama(model="tiny", base_url=gateway, validate_model_on_init=True)
    ChatOllama(model="llava:7b", base_url=gateway, validate_model_on_init=True)
    with pytest.raises(ValueError, match="not found in Ollama"):
        ChatOllama(model="nope", base_url=gateway, validate_model_on_init=True)


@needs_langchain
def test_langchain_chat_invoke(gateway: str, vllm: VLLMStandin) -> None:
    msg = ChatOllama(model="tiny", base_url=gateway).invoke("Hi")
    assert msg.content == "Hello from tiny!"
    assert msg.response_metadata["done_reason"] == "stop"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 4
    assert msg.usage_metadata["input_tokens"] > 0
    assert last_vllm(vllm)["stream"] is True  # ChatOllama streams even for invoke()


@needs_langchain
def test_langchain_chat_stream(gateway: str, vllm: VLLMStandin) -> None:
    chunks = list(ChatOllama(model="tiny", base_url=gateway).stream("Hi"))
    assert "".join(str(c.content) for c in chunks) == "Hello from tiny!"
    assert len([c for c in chunks if c.content]) >= 4


@needs_langchain
def test_langchain_async(gateway: str, vllm: VLLMStandin) -> None:
    llm = ChatOllama(model="tiny", base_url=gateway)

    async def go() -> tuple[str, list[str]]:
        whole = await llm.ainvoke("Hi")
        parts = [str(c.content) async for c in llm.astream("Hi")]
        return str(whole.content), parts

    whole, parts = asyncio.run(go())
    assert whole == "Hello from tiny!" and "".join(parts) == "Hello from tiny!"
    assert len(vllm.requests) == 2


@needs_langchain
def test_langchain_llm_generate(gateway: str, vllm: VLLMStandin) -> None:
    assert OllamaLLM(model="tiny", base_url=gateway).invoke("Why is the sky blue?") == "Hello from tiny!"
    assert last_vllm(vllm)["messages"][-1] == {"role": "user", "content": "Why is the sky blue?"}


@needs_langchain
def test_langchain_bind_tools(gateway: str, vllm: VLLMStandin) -> None:
    @tool
    def lc_get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return get_weather(city)

    llm = ChatOllama(model="tiny", base_url=gateway).bind_tools([lc_get_weather])
    vllm.script = Script(tool_calls=[{"name": "lc_get_weather", "arguments": '{"city": "Paris"}'}], tokens=[])
    msg = llm.invoke("What is the weather in Paris?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("lc_get_weather", {"city": "Paris"})]
    assert tool_names(last_vllm(vllm)) == ["lc_get_weather"]

    vllm.script = Script(tokens=["It is sunny."])
    answer = llm.invoke(
        [
            HumanMessage("What is the weather in Paris?"),
            msg,
            ToolMessage(get_weather("Paris"), tool_call_id=msg.tool_calls[0]["id"] or ""),
        ]
    )
    assert answer.content == "It is sunny."
    sent = last_vllm(vllm)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]


@needs_langchain
def test_langchain_structured_output(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = person_json()
    person = ChatOllama(model="tiny", base_url=gateway).with_structured_output(Person).invoke("Who is Ann?")
    assert person == Person(name="Ann", age=3)
    assert_schema_forwarded(last_vllm(vllm), {"name", "age"})


@needs_langchain
def test_langchain_reasoning(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = reasoning()
    msg = ChatOllama(model="tiny", base_url=gateway, reasoning=True).invoke("6*7?")
    assert msg.content == "Forty-two"
    assert msg.additional_kwargs["reasoning_content"] == "Let me think"
    assert_thinking_requested(last_vllm(vllm))


@needs_langchain
def test_langchain_embeddings(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    emb = OllamaEmbeddings(model="nomic-embed-text", base_url=gateway)
    assert emb.embed_query("hello") == pytest.approx([0.6, 0.8, 0.0])
    docs = emb.embed_documents(["first", "second"])
    assert len(docs) == 2 and docs[1] == pytest.approx([0.6, 0.8, 0.0])
    assert last_vision(vision, "/api/embed")["input"] == ["first", "second"]
    assert vllm.requests == []


@needs_langchain
def test_langchain_vision(gateway: str, vision: OllamaStandin) -> None:
    msg = ChatOllama(model="llava:7b", base_url=gateway).invoke(
        [
            HumanMessage(
                content=[
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": f"data:image/png;base64,{PNG_B64}"},
                ]
            )
        ]
    )
    assert msg.content == "I see a cat"
    assert last_vision(vision, "/api/chat")["messages"][-1]["images"] == [PNG_B64]


# ---- LlamaIndex: Ollama LLM (llama-index-llms-ollama) -------------------------------------------


def li(gateway: str, model: str = "tiny", **kwargs: Any) -> LlamaIndexOllama:
    return LlamaIndexOllama(model=model, base_url=gateway, request_timeout=10, **kwargs)


@needs_llamaindex
def test_llamaindex_context_window_from_show(gateway: str) -> None:
    # LlamaIndex asks /api/show before every call and takes the first `*context_length` key.
    assert li(gateway).metadata.context_window == 2048
    assert li(gateway, "llava:7b").metadata.context_window == 4096


@needs_llamaindex
def test_llamaindex_complete(gateway: str, vllm: VLLMStandin) -> None:
    resp = li(gateway).complete("Why is the sky blue?")
    assert resp.text == "Hello from tiny!"
    body = last_vllm(vllm)
    assert body["messages"][-1] == {"role": "user", "content": "Why is the sky blue?"}
    assert "num_ctx" not in body and "keep_alive" not in body


@needs_llamaindex
def test_llamaindex_chat(gateway: str, vllm: VLLMStandin) -> None:
    resp = li(gateway).chat([ChatMessage(role="system", content="Be brief"), ChatMessage(role="user", content="Hi")])
    assert resp.message.content == "Hello from tiny!"
    assert resp.raw is not None and resp.raw["done_reason"] == "stop"
    assert resp.raw["usage"]["completion_tokens"] == 4
    assert [m["role"] for m in last_vllm(vllm)["messages"]] == ["system", "user"]


@needs_llamaindex
def test_llamaindex_stream_chat(gateway: str, vllm: VLLMStandin) -> None:
    deltas = [r.delta or "" for r in li(gateway).stream_chat([ChatMessage(role="user", content="Hi")])]
    assert "".join(deltas) == "Hello from tiny!"
    assert len([d for d in deltas if d]) >= 4
    assert last_vllm(vllm)["stream"] is True


@needs_llamaindex
def test_llamaindex_async(gateway: str, vllm: VLLMStandin) -> None:
    llm = li(gateway)

    async def go() -> tuple[str, str]:
        whole = await llm.achat([ChatMessage(role="user", content="Hi")])
        deltas = [r.delta or "" async for r in await llm.astream_chat([ChatMessage(role="user", content="Hi")])]
        return whole.message.content or "", "".join(deltas)

    assert asyncio.run(go()) == ("Hello from tiny!", "Hello from tiny!")
    assert [r["body"]["stream"] for r in vllm.requests] == [True, True]  # vLLM always streams


@needs_llamaindex
def test_llamaindex_tools(gateway: str, vllm: VLLMStandin) -> None:
    llm = li(gateway)
    vllm.script = weather_call()
    resp = llm.chat_with_tools([FunctionTool.from_defaults(fn=get_weather)], user_msg="What is the weather in Paris?")
    calls = llm.get_tool_calls_from_response(resp, error_on_no_tool_call=True)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert tool_names(last_vllm(vllm)) == ["get_weather"]


@needs_llamaindex
def test_llamaindex_structured_predict(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = person_json()
    person = li(gateway).structured_predict(Person, PromptTemplate("Describe {who}."), who="Ann")
    assert person == Person(name="Ann", age=3)
    assert_schema_forwarded(last_vllm(vllm), {"name", "age"})


@needs_llamaindex
def test_llamaindex_thinking(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = reasoning()
    resp = li(gateway, thinking=True).chat([ChatMessage(role="user", content="6*7?")])
    assert [b.content for b in resp.message.blocks if isinstance(b, ThinkingBlock)] == ["Let me think"]
    assert resp.message.content == "Forty-two"
    assert_thinking_requested(last_vllm(vllm))


@needs_llamaindex
def test_llamaindex_vision(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    msg = ChatMessage(
        role="user", blocks=[TextBlock(text="What is this?"), ImageBlock(image=PNG, image_mimetype="image/png")]
    )
    resp = li(gateway, "llava:7b").chat([msg])
    assert resp.message.content == "I see a cat"
    assert last_vision(vision, "/api/chat")["messages"][0]["images"] == [PNG_B64]
    assert vllm.requests == []


# ---- openai SDK on <gateway>/v1 -----------------------------------------------------------------


def oai(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="ollama", max_retries=0, timeout=10)


def test_openai_models_list(gateway: str) -> None:
    ids = {m.id.removesuffix(":latest") for m in oai(gateway).models.list()}
    assert {"tiny", "Qwen/Qwen2.5-7B-Instruct"} <= ids, ids


def test_openai_chat(gateway: str, vllm: VLLMStandin) -> None:
    r = oai(gateway).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0.2
    )
    assert r.choices[0].message.content == "Hello from tiny!"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 4
    body = last_vllm(vllm)
    assert body["model"] == "tiny" and body["temperature"] == 0.2


def test_openai_chat_stream(gateway: str, vllm: VLLMStandin) -> None:
    stream = oai(gateway).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from tiny!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert last_vllm(vllm)["stream_options"] == {"include_usage": True}


def test_openai_async_stream(gateway: str, vllm: VLLMStandin) -> None:
    async def go() -> str:
        async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="ollama", max_retries=0, timeout=10) as client:
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(go()) == "Hello from tiny!"
    assert last_vllm(vllm)["stream"] is True


def test_openai_unknown_model_is_404(gateway: str, vllm: VLLMStandin) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai(gateway).chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 404
    assert "nope" in info.value.message


def test_openai_completions(gateway: str, vllm: VLLMStandin) -> None:
    r = oai(gateway).completions.create(model="tiny", prompt="Once upon a time", max_tokens=8)
    assert r.choices[0].text == "Hello from tiny!"
    body = last_vllm(vllm, "/v1/completions")
    assert body["prompt"] == "Once upon a time" and body["max_tokens"] == 8


def test_openai_tools(gateway: str, vllm: VLLMStandin) -> None:
    client = oai(gateway)
    vllm.script = weather_call()
    r = client.chat.completions.create(model="tiny", messages=[USER], tools=[WEATHER_TOOL])  # type: ignore[list-item]
    call = (r.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert r.choices[0].finish_reason == "tool_calls"

    vllm.script = weather_call()
    stream = client.chat.completions.create(model="tiny", messages=[USER], tools=[WEATHER_TOOL], stream=True)  # type: ignore[list-item]
    name, args, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            name += (delta.function and delta.function.name) or ""
            args += (delta.function and delta.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    assert last_vllm(vllm)["tools"] == [WEATHER_TOOL]


def test_openai_structured_output(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = person_json()
    r = oai(gateway).chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "Who is Ann?"}], response_format=Person
    )
    assert r.choices[0].message.parsed == Person(name="Ann", age=3)
    rf = last_vllm(vllm)["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Person"
    assert set(rf["json_schema"]["schema"]["required"]) == {"name", "age"}


def test_openai_reasoning(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = reasoning()
    stream = oai(gateway).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "6*7?"}],
        stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    chunks = [c for c in stream if c.choices]
    # vLLM's `reasoning` delta field reaches the client unchanged (an extra field for the SDK).
    assert "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks) == "Let me think"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Forty-two"
    assert_thinking_requested(last_vllm(vllm))


def test_openai_embeddings(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    r = oai(gateway).embeddings.create(model="nomic-embed-text", input=["first", "second"])
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == pytest.approx([0.1, 0.2])
    assert last_vision(vision, "/v1/embeddings")["input"] == ["first", "second"]
    assert vllm.requests == []


def test_openai_vision(gateway: str, vllm: VLLMStandin, vision: OllamaStandin) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]
    r = oai(gateway).chat.completions.create(model="llava:7b", messages=[{"role": "user", "content": content}])  # type: ignore[misc,list-item]
    assert r.choices[0].message.content == "I see a cat"
    sent = last_vision(vision, "/v1/chat/completions")
    assert sent["model"] == "llava:7b" and sent["messages"][0]["content"] == content
    assert vllm.requests == []
