"""Prompt-cache warming (`python -m adapter warm FILE`) and the replica pin it rests on
(X-Adapter-Replica), against a gateway in front of stand-in vLLMs: three replicas of one model and a
canary replica.

What each replica received is read from the stand-ins' `requests`: every template must reach every
replica (the canary's too), once, with max_tokens 1, its system prompt and message prefix intact.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapter.catalog import load_catalog, normalize_name
from adapter.routing import REPLICA_HEADER
from adapter.warm import load_templates, run
from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread, dead_port
from tests.standins.vllm import Script, VLLMStandin
from tests.test_backends import serving, write_catalog

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen2.5-14b-instruct"
# Long enough that, without the pin, prefix affinity would send both requests of one template to the
# same replica: the test would then see the gap.
SUPPORT = "You are the support desk of a bank. " + "Answer in the customer's language, politely. " * 40
TEMPLATES = {
    "models": {
        "summarisation": [  # a task alias: resolved by the gateway like any client's request
            {"name": "support", "system": SUPPORT, "prefix": "Summarise this ticket:\n"},
            {"name": "digest", "system": "You write the daily digest.", "prefix": "Today's items:\n"},
        ]
    }
}


@dataclass
class Fleet:
    url: str
    replicas: list[VLLMStandin]  # the model's own backend
    canary: VLLMStandin
    replica_urls: list[str]
    canary_url: str

    @property
    def all(self) -> list[VLLMStandin]:
        return [*self.replicas, self.canary]


def chats(standin: VLLMStandin) -> list[dict[str, Any]]:
    return [r["body"] for r in standin.requests if r["path"] == "/v1/chat/completions"]


@pytest.fixture(scope="module")
def vision_url() -> Iterator[str]:
    with ServerThread(OllamaStandin().app()) as server:
        yield server.url


@contextlib.contextmanager
def fleet(tmp_path: Path, vision_url: str) -> Iterator[Fleet]:
    replicas = [VLLMStandin(models=[MODEL]) for _ in range(3)]
    canary = VLLMStandin(models=[MODEL])
    other = VLLMStandin(models=["mistral-nemo"])
    with serving(*replicas, canary, other) as threads:
        urls = [t.url for t in threads[:3]]
        catalog = write_catalog(
            tmp_path,
            {
                "discover": False,
                "backends": {
                    "vllm-qwen": {"replicas": urls},
                    "vllm-qwen-canary": {"replicas": [threads[3].url]},
                },
                "models": [
                    {
                        "name": MODEL,
                        "backend": "vllm-qwen",
                        "aliases": ["summarisation"],
                        "canary": {"backend": "vllm-qwen-canary", "share": 5},
                    },
                ],
            },
        )
        settings = make_settings(threads[4].url, vision_url, adapter_models_file=catalog)
        with running_gateway(settings) as url:
            yield Fleet(url, replicas, canary, urls, threads[3].url)


def templates_file(tmp_path: Path, content: object = TEMPLATES) -> Path:
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_every_template_reaches_every_replica_once_with_one_token(
    tmp_path: Path, vision_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with fleet(tmp_path, vision_url) as f:
        code = run(templates_file(tmp_path), f.url, concurrency=3, timeout=10, api_key=None)
        out = capsys.readouterr().out
        assert code == 0, out
        for standin in f.all:
            bodies = chats(standin)
            assert len(bodies) == 2, (standin, bodies)
            assert all(b["max_tokens"] == 1 for b in bodies), bodies
            assert {b["model"] for b in bodies} == {MODEL}
            got = sorted((b["messages"][0]["content"], b["messages"][-1]["content"]) for b in bodies)
            want = sorted(
                (t["system"], t["prefix"])
                for t in TEMPLATES["models"]["summarisation"]  # type: ignore[index]
            )
            assert got == want
        # One line per replica (the canary's too), naming its backend.
        for url in f.replica_urls:
            assert f"ok    summarisation @ {url} (vllm-qwen): 2/2 templates" in out, out
        assert f"ok    summarisation @ {f.canary_url} (vllm-qwen-canary): 2/2 templates" in out, out
        assert "warm: 8 of 8 templates warmed on 4 replica(s)" in out, out


def test_a_failing_replica_and_a_missing_model_are_named_and_exit_1(
    tmp_path: Path, vision_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with fleet(tmp_path, vision_url) as f:
        f.replicas[1].script = Script(error_status=500, error_message="engine died")
        content = {"models": {**TEMPLATES["models"], "no-such-model": [{"prefix": "hi"}]}}  # type: ignore[dict-item]
        code = run(templates_file(tmp_path, content), f.url, concurrency=4, timeout=10, api_key=None)
        out = capsys.readouterr().out
        assert code == 1, out
        assert "model 'no-such-model' is not served by any vLLM replica" in out, out
        assert "qwen2.5-14b-instruct" in out  # what the gateway does serve is named
        assert f"FAIL  summarisation @ {f.replica_urls[1]} (vllm-qwen): 0/2 templates" in out, out
        assert "support: HTTP 502: vLLM (vllm-qwen) error (500): engine died" in out, out
        # The others were still warmed.
        assert out.count("ok    summarisation") == 3, out
        assert len(chats(f.replicas[0])) == 2 and len(chats(f.canary)) == 2


def test_a_gateway_that_is_down_fails_at_once_with_one_line(tmp_path: Path) -> None:
    path = templates_file(tmp_path)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "warm", str(path), "--gateway", f"http://127.0.0.1:{dead_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2, result
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warm: cannot reach the gateway at http://127.0.0.1:"), result
    assert time.monotonic() - started < 15  # an interpreter start, not a timeout


def test_a_gateway_that_never_answers_is_bounded_by_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        code = run(
            templates_file(tmp_path),
            f"http://127.0.0.1:{silent.getsockname()[1]}",
            concurrency=1,
            timeout=1,
            api_key=None,
        )
        elapsed = time.monotonic() - started
    assert code == 2 and elapsed < 5, elapsed
    assert "cannot reach the gateway" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"models": {"m": [{"system": "no prefix"}]}}, "models.m.0.prefix"),
        ({"models": {"m": []}}, "model 'm' has no templates"),
        ({"models": {"m": [{"prefix": "x", "sytem": "typo"}]}}, "models.m.0.sytem"),
        (["not", "a", "mapping"], "the top level must be a mapping"),
    ],
)
def test_a_bad_templates_file_is_named_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, named: str
) -> None:
    code = run(templates_file(tmp_path, content), "http://127.0.0.1:9", concurrency=1, timeout=1, api_key=None)
    out = capsys.readouterr().out
    assert code == 2 and named in out, out


# ---- the pin itself ---------------------------------------------------------------------------------


def test_the_pin_overrides_affinity_and_is_refused_for_a_stranger(tmp_path: Path, vision_url: str) -> None:
    with fleet(tmp_path, vision_url) as f, httpx.Client(base_url=f.url, timeout=10) as http:
        body = {"model": MODEL, "messages": [{"role": "system", "content": SUPPORT}, {"role": "user", "content": "x"}]}
        body["stream"] = False
        for i, url in enumerate(f.replica_urls):  # one prefix, three replicas: only the pin can do that
            r = http.post("/api/chat", json=body, headers={REPLICA_HEADER: url + "/"})  # a trailing / is fine
            assert r.status_code == 200, r.text
            assert len(chats(f.replicas[i])) == 1
        # The canary's replica is one of the model's too; pinning takes no canary turn.
        assert http.post("/api/chat", json=body, headers={REPLICA_HEADER: f.canary_url}).status_code == 200
        assert len(chats(f.canary)) == 1

        stranger = "http://127.0.0.1:1"
        r = http.post("/api/chat", json=body, headers={REPLICA_HEADER: stranger})
        assert r.status_code == 400
        message = r.json()["error"]
        assert stranger in message and MODEL in message and f.replica_urls[0] in message, message

        # /health lists what each replica answers: what warm matches a model against.
        health = http.get("/health").json()
        names = health["backends"]["vllm-qwen"]["replicas"][0]["models"]
        assert MODEL in names and "summarisation" in names
        assert MODEL in health["backends"]["vllm-qwen-canary"]["replicas"][0]["models"]


def test_a_pinned_replica_that_is_down_answers_its_failure(tmp_path: Path, vision_url: str) -> None:
    with fleet(tmp_path, vision_url) as f, httpx.Client(base_url=f.url, timeout=10) as http:
        f.replicas[2].script = Script(error_status=503, error_message="loading")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
        r = http.post("/api/chat", json=body, headers={REPLICA_HEADER: f.replica_urls[2]})
        assert r.status_code == 503, r.text  # not balanced away to a healthy replica
        assert sum(len(chats(s)) for s in f.all) == 1


def test_the_example_templates_name_models_of_the_example_catalog() -> None:
    catalog = load_catalog(ROOT / "examples" / "models-policy.yaml")
    names = {normalize_name(n) for e in catalog.models if e.backend != "ollama" for n in (e.name, *e.aliases)}
    plan = load_templates(ROOT / "examples" / "warm-templates.yaml")
    assert {normalize_name(m) for m in plan.models} <= names
