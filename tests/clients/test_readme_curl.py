"""Every `curl` example in README.md, executed as written against the test gateway.

The examples are taken from ```bash / ```sh / ```shell blocks: each command that starts with
`curl` and targets `localhost:11434` (continuation lines and multi-line quoted bodies included).
Only the host is rewritten, to the test gateway; the command then runs under bash exactly as a
user would paste it. The README therefore cannot drift from the product: an example that stops
working fails here. The examples run against their own gateway whose vLLM stand-in serves the model
./scripts/serve.sh embeds (`smollm2:135m`, named by scripts/engine/vllm_server.py), `tiny` (the test
tier's), and the served model names docker-compose.vllm.yml defaults to (`*_SERVED_MODEL_NAME`, e.g.
`qwen2.5:7b-instruct`), and whose Ollama Vision stand-in serves `llava:7b` and `nomic-embed-text`:
examples must use those models (and a real base64 image, if any).

To see the HTTP status without touching the command, curl is given a config file (CURL_HOME) that
only adds `--write-out` to stderr; stdout is the example's own output.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread
from tests.standins.vllm import VLLMStandin

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
COMPOSE = ROOT / "docker-compose.vllm.yml"
FENCE = re.compile(r"^(\s*)```+\s*([A-Za-z0-9_+-]*)")
SHELL_LANGS = {"bash", "sh", "shell"}
TARGET = re.compile(r"\b(?:localhost|127\.0\.0\.1):11434\b")
STATUS_MARK = "__README_CURL_HTTP_STATUS__="


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line of README.md where the command starts
    command: str

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def _complete(command: str) -> bool:
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:  # an open quote: a multi-line -d '...' body goes on
        return False
    return True


def extract_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    lines = text.splitlines()
    in_shell = in_block = False
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            if in_block:
                in_block = in_shell = False
            else:
                in_block, in_shell = True, fence.group(2).lower() in SHELL_LANGS
            i += 1
            continue
        if in_shell and re.match(r"\s*curl\s", lines[i]):
            start = i
            command = lines[i].strip()
            while not _complete(command) and i + 1 < len(lines) and not FENCE.match(lines[i + 1]):
                i += 1
                command += "\n" + lines[i]
            if TARGET.search(command):
                examples.append(Example(start + 1, command))
        i += 1
    return examples


EXAMPLES = extract_examples(README.read_text()) if README.exists() else []


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _without_headers(example: Example, out: str) -> str:
    """`curl -i` prints the response head first: keep the body."""
    args = shlex.split(example.command, comments=True)
    if not any(a in ("-i", "--include") or re.fullmatch(r"-[a-zA-Z]*i[a-zA-Z]*", a) for a in args[1:]):
        return out
    assert out.startswith("HTTP/"), f"{example}: -i given but no status line"
    return re.split(r"\r?\n\r?\n", out, maxsplit=1)[1] if re.search(r"\r?\n\r?\n", out) else ""


def check_output(example: Example, out: str) -> None:
    """Valid JSON, NDJSON, or SSE of JSON events; never an `{"error": ...}` object."""
    out = _without_headers(example, out)
    path_is_root = re.search(r"11434/?(?:['\"\s]|$)", example.command) is not None
    if path_is_root:
        assert out == "Ollama is running", out
        return
    assert out.strip(), f"{example}: empty output"
    if _is_json(out):
        objects = [json.loads(out)]
    else:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if all(ln.startswith("data:") for ln in lines):  # OpenAI-style SSE
            payloads = [ln.removeprefix("data:").strip() for ln in lines]
            assert payloads[-1] == "[DONE]", f"{example}: SSE stream does not end with [DONE]"
            lines = payloads[:-1]
        bad = [ln for ln in lines if not _is_json(ln)]
        assert not bad, f"{example}: not JSON/NDJSON/SSE, first bad line: {bad[0][:200]!r}"
        objects = [json.loads(ln) for ln in lines]
        assert objects, f"{example}: no JSON in the output"
    errors = [o for o in objects if isinstance(o, dict) and "error" in o]
    assert not errors, f"{example}: the answer carries an error: {errors[0]}"


def test_readme_has_curl_examples() -> None:
    assert README.exists(), f"{README} is missing"
    assert EXAMPLES, (
        "README.md has no curl examples against http://localhost:11434 in ```bash/```sh blocks; "
        "the client matrix runs every one of them (tests/clients/test_readme_curl.py)"
    )
    endpoints = {m.group(1) for e in EXAMPLES for m in re.finditer(r"11434(/[\w/]+)", e.command)}
    for needed in ("/api/tags", "/api/chat", "/api/generate", "/api/embed"):
        assert needed in endpoints, f"README.md has no curl example for {needed} (found {sorted(endpoints)})"


@pytest.fixture(scope="session")
def curl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("curl") is None:
        pytest.skip("CLIENT MATRIX INCOMPLETE: curl not installed, the README examples were NOT run")
    home = tmp_path_factory.mktemp("curl_home")
    (home / ".curlrc").write_text(f'no-progress-meter\nwrite-out = "%{{stderr}}{STATUS_MARK}%{{http_code}}\\n"\n')
    return home


def embedded_model_name() -> str:
    """The model ./scripts/serve.sh serves when no vLLM is named (the README's first command)."""
    name = "scripts_engine_vllm_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "engine" / "vllm_server.py")
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)  # its dataclasses look themselves up there
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].SMOLLM2.served_name


def deployment_model_names() -> list[str]:
    """The names the documented deployment serves (compose defaults of *_SERVED_MODEL_NAME)."""
    if not COMPOSE.exists():
        return []
    return sorted(set(re.findall(r"SERVED_MODEL_NAME:-([^}]+)\}", COMPOSE.read_text())))


@pytest.fixture(scope="module")
def readme_upstreams() -> Iterator[tuple[str, VLLMStandin, OllamaStandin]]:
    vllm = VLLMStandin(models=["tiny", embedded_model_name(), *deployment_model_names()])
    vision = OllamaStandin()
    with ServerThread(vllm.app()) as v, ServerThread(vision.app()) as o:
        with running_gateway(make_settings(v.url, o.url)) as url:
            yield url, vllm, vision


@pytest.fixture
def readme_gateway(readme_upstreams: tuple[str, VLLMStandin, OllamaStandin]) -> str:
    url, vllm, vision = readme_upstreams
    vllm.reset()
    vision.reset()
    return url


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_readme_curl_example(example: Example, readme_gateway: str, curl_home: Path) -> None:
    host = readme_gateway.removeprefix("http://")
    command = TARGET.sub(host, example.command)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "CURL_HOME": str(curl_home), "HOME": str(curl_home)},
    )
    context = f"{example}\n$ {command}\n--- stdout\n{done.stdout[:2000]}\n--- stderr\n{done.stderr[:2000]}"
    assert done.returncode == 0, f"exit {done.returncode}\n{context}"
    statuses = re.findall(STATUS_MARK + r"(\d+)", done.stderr)
    assert statuses, f"no HTTP status seen\n{context}"
    assert all(int(s) < 400 for s in statuses), f"HTTP {statuses}\n{context}"
    try:
        check_output(example, done.stdout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context}") from None


def test_extractor_reads_multiline_commands() -> None:
    text = "\n".join(
        [
            "```bash",
            "curl http://localhost:11434/api/chat -d '{",
            '  "model": "tiny",',
            '  "messages": [{"role": "user", "content": "Hi"}]',
            "}'",
            "curl -X POST http://localhost:11434/api/generate \\",
            "  -H 'Content-Type: application/json' \\",
            '  -d \'{"model": "tiny", "prompt": "Hi"}\'',
            "curl http://localhost:8000/v1/models",
            "```",
            "```python",
            "curl = 'http://localhost:11434/api/tags'",
            "```",
            "```json",
            "curl http://localhost:11434/api/ps",
            "```",
        ]
    )
    found = extract_examples(text)
    assert [e.line for e in found] == [2, 6]
    assert shlex.split(found[0].command)[-1].startswith('{\n  "model"')
    assert found[1].command.count("\n") == 2
