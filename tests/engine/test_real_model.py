"""The gateway in front of a real vLLM serving a REAL instruct model: SmolLM2-135M-Instruct as
``smollm2:135m``, exactly what ./scripts/serve.sh serves (same launcher, same flags).

The tiny random model of test_real_vllm.py shows the wire format; only a model that was trained
shows what users rely on: answers that end by themselves, a conversation whose earlier turns are
used, schema-shaped JSON, reproducible greedy answers, text beyond ASCII. A 135M model is weak, so
each prompt below was chosen because it answers it reliably under greedy decoding, and the tests
assert properties of the answers, never their prose.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

pytestmark = pytest.mark.engine

MODEL = "smollm2:135m"
TIMEOUT = 120.0
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def client(real_gateway) -> ollama.Client:
    return ollama.Client(host=real_gateway.base_url, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def upstream(real_gateway) -> Iterator[httpx.Client]:
    """vLLM itself, for reference figures."""
    with httpx.Client(base_url=real_gateway.vllm_url, timeout=TIMEOUT) as c:
        yield c


def non_ascii(text: str) -> set[str]:
    return {ch for ch in text if ord(ch) > 127}


def test_answer_ends_by_itself_within_num_predict(client: ollama.Client) -> None:
    """A trained model stops at its end-of-turn token; the random one only ever runs into the limit."""
    resp = client.chat(
        MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options={**GREEDY, "num_predict": 48},
    )
    assert resp.done is True
    assert resp.done_reason == "stop", resp
    assert 0 < resp.eval_count < 48, resp
    assert resp.message.role == "assistant" and resp.message.content.strip(), resp


def test_multi_turn_context_is_kept(client: ollama.Client) -> None:
    """A name given two turns back is answered back; asked without the history, it never is.

    Measured with 8 pet names and two phrasings: 15 of 16 conversations answered with the name, and
    no question without the history did. So at least 2 of these 3 must, and no control may.
    """
    pets = [("parrot", "Kiwi"), ("cat", "Felix"), ("cat", "Mittens")]
    recalled = []
    for pet, name in pets:
        history = [
            {"role": "user", "content": f"I have a {pet} called {name}."},
            {"role": "assistant", "content": "How lovely!"},
            {"role": "user", "content": f"What is my {pet} called?"},
        ]
        answer = client.chat(MODEL, messages=history, options={**GREEDY, "num_predict": 32}).message.content
        recalled.append(name.lower() in answer.lower())
        control = client.chat(MODEL, messages=history[-1:], options={**GREEDY, "num_predict": 32}).message.content
        assert name.lower() not in control.lower(), f"{name!r} named without the history: {control!r}"
    assert sum(recalled) >= 2, f"names recalled from the conversation: {dict(zip(pets, recalled, strict=True))}"


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
}


@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_format_schema_is_honoured(client: ollama.Client, endpoint: str) -> None:
    prompt = "Alice is 30 and lives in Paris. Give her details as JSON."
    options = {**GREEDY, "num_predict": 96}
    if endpoint == "chat":
        resp = client.chat(MODEL, messages=[{"role": "user", "content": prompt}], format=PERSON, options=options)
        text = resp.message.content
    else:
        resp = client.generate(MODEL, prompt=prompt, format=PERSON, options=options)
        text = resp.response
    assert resp.done_reason == "stop", f"the JSON did not end within 96 tokens: {text!r}"
    obj = json.loads(text)
    assert isinstance(obj, dict) and {"name", "age", "city"} <= set(obj), obj
    assert isinstance(obj["name"], str) and obj["name"].strip(), obj
    assert isinstance(obj["age"], int) and not isinstance(obj["age"], bool), obj
    assert isinstance(obj["city"], str) and obj["city"].strip(), obj


def test_same_answer_twice_with_a_seed(client: ollama.Client) -> None:
    """Greedy decoding, and seeded sampling at temperature 1, both repeat themselves exactly."""
    messages = [{"role": "user", "content": "Tell me about the moon."}]
    for options in ({**GREEDY, "num_predict": 40}, {"temperature": 1.0, "seed": 11, "num_predict": 40}):
        first, second = (client.chat(MODEL, messages=messages, options=options) for _ in range(2))
        assert first.message.content == second.message.content, options
        assert first.eval_count == second.eval_count, options
        assert first.message.content.strip(), options


def test_unicode_in_and_out(client: ollama.Client, upstream: httpx.Client) -> None:
    """Non-ASCII reaches vLLM intact (same prompt token count as vLLM's own tokenizer gives the same
    messages) and comes back intact, streamed or not (no U+FFFD where a character was split between
    two tokens)."""
    prompts = ["How do you say 'coffee' in French?", "Copy this text exactly: naïve café — 東京 😀"]
    seen: set[str] = set()
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}]
        whole = client.chat(MODEL, messages=messages, options={**GREEDY, "num_predict": 40})
        streamed = "".join(
            part.message.content
            for part in client.chat(MODEL, messages=messages, options={**GREEDY, "num_predict": 40}, stream=True)
        )
        assert "\ufffd" not in whole.message.content, whole.message.content
        assert streamed == whole.message.content
        reference = upstream.post(
            "/tokenize", json={"model": MODEL, "messages": messages, "add_generation_prompt": True}
        ).json()
        assert whole.prompt_eval_count == reference["count"], (prompt, reference)
        seen |= non_ascii(whole.message.content)
    assert seen, "no answer carried a non-ASCII character"


def test_keep_alive_zero_unloads_and_the_next_request_still_answers(client: ollama.Client) -> None:
    unloaded = client.generate(MODEL, prompt="", keep_alive=0)
    assert unloaded.done is True and unloaded.done_reason == "unload", unloaded
    assert unloaded.response == ""
    chat_unloaded = client.chat(MODEL, messages=[], keep_alive=0)
    assert chat_unloaded.done_reason == "unload", chat_unloaded
    after = client.generate(MODEL, prompt="What is the capital of France?", options={**GREEDY, "num_predict": 32})
    assert after.done_reason in ("stop", "length") and after.response.strip(), after
    assert after.eval_count > 0


def test_show_reports_the_served_context_length(client: ollama.Client, upstream: httpx.Client) -> None:
    served = {m["id"]: m for m in upstream.get("/v1/models").json()["data"]}
    assert served[MODEL]["max_model_len"] == 2048
    info = client.show(MODEL)
    assert info.modelinfo is not None
    assert info.modelinfo["general.context_length"] == 2048, info.modelinfo
    arch = info.modelinfo["general.architecture"]
    assert info.modelinfo[f"{arch}.context_length"] == 2048, info.modelinfo
    listed = {m.model for m in client.list().models}
    assert MODEL in listed, listed


def readme_examples_for_the_embedded_model() -> list[Any]:
    """The curl lines of README's "Try it" that ./scripts/serve.sh alone answers (not the Ollama Vision ones)."""
    from tests.clients.test_readme_curl import EXAMPLES, README

    lines = README.read_text().splitlines()
    start = lines.index("## Try it") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [e for e in EXAMPLES if start < e.line <= end and (MODEL in e.command or '"model"' not in e.command)]


@pytest.mark.parametrize("example", readme_examples_for_the_embedded_model(), ids=str)
def test_readme_try_it_lines_run_as_written(example: Any, real_gateway, tmp_path) -> None:
    """What the README promises a new user: its lines, unchanged but for the port, against the real
    model served exactly as serve.sh serves it (its default sampling included: no num_predict)."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed: the README lines were NOT run against the real model")
    from tests.clients.test_readme_curl import STATUS_MARK, TARGET, check_output

    (tmp_path / ".curlrc").write_text(f'no-progress-meter\nwrite-out = "%{{stderr}}{STATUS_MARK}%{{http_code}}\\n"\n')
    command = TARGET.sub(real_gateway.base_url.removeprefix("http://"), example.command)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "CURL_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    context = f"{example}\n$ {command}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
    assert done.returncode == 0, context
    statuses = re.findall(STATUS_MARK + r"(\d+)", done.stderr)
    assert statuses and all(int(s) < 400 for s in statuses), context
    check_output(example, done.stdout)


def test_two_real_vllm_servers_behind_one_gateway(real_vllm, vllm, tmp_path) -> None:
    """VLLM_BASE_URL listing two real vLLM servers with different models: one endpoint lists both,
    each model answered by its own server, each described with its own server's context length.
    (Last in this module: the tiny-model server it adds stays up for test_real_vllm.py.)"""
    from tests.engine.conftest import gateway_process

    servers = {"tiny": vllm.base_url, MODEL: real_vllm.base_url}
    with gateway_process(f"{vllm.base_url},{real_vllm.base_url}", tmp_path / "two-servers-gateway.log") as gw:
        client = ollama.Client(host=gw.base_url, timeout=TIMEOUT)
        assert {"tiny:latest", MODEL} <= {m.model for m in client.list().models}
        for model, url in servers.items():
            card = httpx.get(f"{url}/v1/models", timeout=TIMEOUT).json()["data"][0]
            shown = client.show(model)
            arch = shown.modelinfo["general.architecture"]
            assert shown.modelinfo[f"{arch}.context_length"] == card["max_model_len"], model
            resp = client.chat(model, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
            assert resp.done and resp.model == model
        metrics = httpx.get(f"{gw.base_url}/metrics", timeout=TIMEOUT).text
        for url in servers.values():
            # Each server got exactly the one chat meant for its model.
            line = f'ollama_adapter_replica_requests_total{{backend="vllm",replica="{url}"}} 1.0'
            assert line in metrics, metrics
