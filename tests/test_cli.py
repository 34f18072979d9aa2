"""Start-up: flags, settings validated at start with one-line messages, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.standins.server import dead_port, free_port


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTER_", "VLLM_", "VISION_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def test_help_lists_flags() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--host", "--port", "--vllm-url", "--vision-url", "--models-file"):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        ({"VLLM_BASE_URL": "not a url"}, (), "VLLM_BASE_URL"),
        ({"VISION_OLLAMA_URL": "ftp://x"}, (), "VISION_OLLAMA_URL"),
        ({"ADAPTER_PORT": "99999"}, (), "ADAPTER_PORT"),
        ({"ADAPTER_PORT": "eleven"}, (), "ADAPTER_PORT"),
        ({"VLLM_BASE_URL": "http://localhost:notaport"}, (), "port"),
        ({"MODEL_ALIASES": "justaname"}, (), "MODEL_ALIASES"),
        ({"ADAPTER_MODE": "turbo"}, (), "ADAPTER_MODE"),
        ({}, ("--port", "0x"), "invalid"),
    ],
)
def test_bad_settings_exit_with_one_line(env: dict[str, str], args: tuple[str, ...], needle: str) -> None:
    proc = run_cli(*args, env=env)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    # One message line (argparse adds its usage lines above its own).
    message = [line for line in proc.stderr.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len(message) == 1


def test_starts_with_vllm_down_and_flags_override_env() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTER_", "VLLM_", "VISION_"))}
    env.update(ADAPTER_PORT="1", VLLM_BASE_URL=f"http://127.0.0.1:{dead_port()}/v1", ADAPTER_LOG_LEVEL="warning")
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapter", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.text == "Ollama is running"
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 502 and r.json()["error"].startswith("vLLM is unavailable")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_console_script_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "vllm-ollama-adapter")
    assert os.path.exists(script)
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "--vllm-url" in proc.stdout
