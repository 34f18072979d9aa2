"""The embedded engine of ``./scripts/serve.sh``: a real vLLM on the CPU with the gateway in front.

serve.sh runs this (with the gateway's venv python) when no vLLM is configured: no ``--vllm-url``,
no ``VLLM_BASE_URL``, no model catalog. It

1. validates the gateway's flags and settings with the gateway's own parser, and checks that the
   gateway's port is free, before anything slow (a second serve.sh stops here, no second engine);
2. installs what is missing (scripts/engine/setup_vllm.sh, setup_smollm2.sh; both reuse the cache);
3. starts vLLM serving SmolLM2-135M-Instruct as ``smollm2:135m`` on 127.0.0.1 (a free port, or
   ``ADAPTER_ENGINE_PORT``), log in ``$ADAPTER_ENGINE_HOME/logs/serve-vllm.log``;
4. starts ``python -m adapter`` with the given flags and ``VLLM_BASE_URL`` pointing at it;
5. prints where it listens, the model and a curl line, then watches both.

Each server runs in its own process group. Ctrl-C or SIGTERM stops the gateway, then vLLM, and waits
for both groups to be gone. If either server exits, the other is stopped too and this exits non-zero
(with vLLM's last log lines and the likely reason): never a gateway left answering 502 alone.
``python -m adapter`` itself stays a pure gateway; the engine belongs to this start script.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

# This checkout's gateway, whatever the venv's editable install points at (the gateway itself runs
# with this checkout as its working directory too).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import vllm_server

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE_SCRIPTS = Path(__file__).resolve().parent
GATEWAY_START_TIMEOUT = 60.0
LOG_TAIL_LINES = 30


class Stop(Exception):
    """SIGTERM or SIGINT: stop both servers and exit."""


def say(message: str) -> None:
    print(f"serve.sh: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    say(f"error: {message}")
    return 1


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def port_in_use(host: str, port: int) -> OSError | None:
    """Try to bind as uvicorn will (SO_REUSEADDR): an error means someone listens there already."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                return exc
    return None


def local_url(host: str, port: int) -> str:
    """How to reach a server listening on ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def engine_port() -> int:
    raw = os.environ.get("ADAPTER_ENGINE_PORT", "").strip()
    if not raw:
        return vllm_server.free_port()
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"ADAPTER_ENGINE_PORT must be a port number (1-65535), got {raw!r}")
    port = int(raw)
    if (err := port_in_use("127.0.0.1", port)) is not None:
        raise ValueError(f"ADAPTER_ENGINE_PORT {port} is already in use on 127.0.0.1 ({err.strerror or err})")
    return port


def install() -> bool:
    """The engine venv and the model; both scripts take a second when everything is cached."""
    for script in ("setup_vllm.sh", "setup_smollm2.sh"):
        # Their progress goes to stderr: stdout carries only the ready banner.
        done = subprocess.run(["bash", str(ENGINE_SCRIPTS / script)], stdin=subprocess.DEVNULL, stdout=sys.stderr)
        if done.returncode != 0:
            return False
    return True


def engine_failed(srv: vllm_server.VllmServer, what: str) -> int:
    log_text = vllm_server.tail(srv.log_path, 400)
    returncode = srv.proc.poll() if srv.proc is not None else None
    reason = vllm_server.explain_failure(log_text, returncode) or "see the log lines above"
    print(f"--- last lines of {srv.log_path}", file=sys.stderr)
    print(vllm_server.tail(srv.log_path, LOG_TAIL_LINES), file=sys.stderr)
    print("---", file=sys.stderr, flush=True)
    return fail(f"{what} (exit status {returncode}): {reason}")


def banner(url: str, srv: vllm_server.VllmServer, started: float) -> str:
    model = srv.model.served_name
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    body = json.dumps({"model": model, "messages": question, "stream": False})
    return "\n".join(
        [
            "",
            f"Ollama API ready on {url} after {time.monotonic() - started:.0f} s"
            f" (gateway in front of an embedded vLLM on the CPU)",
            f"  model:  {model}  (SmolLM2-135M-Instruct, context {srv.model.max_model_len} tokens)",
            f"  try:    curl {url}/api/chat -d '{body}'",
            f"  vLLM:   {srv.base_url}  (log: {srv.log_path})",
            "Ctrl-C stops the gateway and the engine.",
            "",
        ]
    )


def run(argv: list[str]) -> int:
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    # The gateway's own parser and settings: a wrong flag or variable stops us before the engine starts.
    from pydantic import ValidationError

    from adapter.__main__ import load_settings, parse_args
    from adapter.catalog import CatalogError
    from adapter.config import describe_validation_error

    args = parse_args(argv)
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        return fail(f"invalid settings: {describe_validation_error(exc)}")
    except CatalogError as exc:
        return fail(str(exc))
    host, port = settings.adapter_host, settings.adapter_port
    url = local_url(host, port)
    if (err := port_in_use(host, port)) is not None:
        return fail(
            f"cannot listen on {host}:{port}: {err.strerror or err}. Is ./scripts/serve.sh (or Ollama) already "
            f"running there? Stop it, or start this one with --port N. No engine was started."
        )
    try:
        vllm_port = engine_port()
    except ValueError as exc:
        return fail(str(exc))

    srv: vllm_server.VllmServer | None = None
    gateway: subprocess.Popen | None = None
    stopped_by_signal = False
    try:
        if not install():
            return fail("the embedded engine could not be installed (see above); nothing was started")
        engine = vllm_server.find_engine()
        srv = vllm_server.VllmServer(
            engine, vllm_server.SMOLLM2, port=vllm_port, log_path=engine.home / "logs" / "serve-vllm.log"
        )
        say(f"starting vLLM ({srv.model.served_name}) on {srv.base_url}, about 25 s; log: {srv.log_path}")
        try:
            srv.start()
        except vllm_server.ServerFailed:
            return engine_failed(srv, "the embedded vLLM did not start")
        say(f"vLLM ready after {srv.startup_seconds:.1f} s; starting the gateway on {host}:{port}")

        env = dict(os.environ, VLLM_BASE_URL=srv.base_url, PYTHONUNBUFFERED="1")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "adapter", *argv],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=vllm_server.die_with_parent,
        )
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while vllm_server.http_status(f"{url}/") != 200:
            if gateway.poll() is not None:
                return fail(f"the gateway exited with status {gateway.returncode} (see above); vLLM stopped")
            if not srv.alive():
                return engine_failed(srv, "the embedded vLLM exited")
            if time.monotonic() > deadline:
                return fail(f"the gateway did not answer on {url}/ within {GATEWAY_START_TIMEOUT:.0f} s")
            time.sleep(0.2)
        print(banner(url, srv, started), flush=True)

        while True:
            if not srv.alive():
                return engine_failed(srv, "the embedded vLLM exited; the gateway was stopped with it")
            if gateway.poll() is not None:
                return fail(f"the gateway exited with status {gateway.returncode}; vLLM was stopped with it")
            time.sleep(0.5)
    except Stop as stop:
        say(f"{stop}: stopping the gateway and the engine")
        stopped_by_signal = True
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short (stop_process_group escalates to SIGKILL itself).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gateway is not None:
            vllm_server.stop_process_group(gateway, grace=10)
        if srv is not None:
            srv.stop()
        if stopped_by_signal:
            say("stopped")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
