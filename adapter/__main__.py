"""`python -m adapter` / `vllm-ollama-adapter`: parse flags, load settings, run uvicorn."""

from __future__ import annotations

import argparse
import atexit
import logging
import logging.handlers
import os
import queue
import sys

from pydantic import ValidationError

from adapter.catalog import CatalogError
from adapter.config import Settings, describe_validation_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vllm-ollama-adapter",
        description="Ollama's API on one side, vLLM's OpenAI server on the other. "
        "Every setting is also an environment variable (see README).",
    )
    parser.add_argument("--host", help="address to listen on (env ADAPTER_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (env ADAPTER_PORT, default 11434)")
    parser.add_argument("--vllm-url", help="vLLM's base URL (env VLLM_BASE_URL, default http://localhost:8000)")
    parser.add_argument(
        "--vision-url", help="Ollama Vision's URL (env VISION_OLLAMA_URL, default http://localhost:11435)"
    )
    parser.add_argument("--models-file", help="YAML model catalog (env ADAPTER_MODELS_FILE)")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "adapter_host": args.host,
        "adapter_port": args.port,
        "vllm_base_url": args.vllm_url,
        "vision_ollama_url": args.vision_url,
        "adapter_models_file": args.models_file,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def configure_logging(level: str) -> None:
    """Log records go through a queue to a writer thread: no blocking write on the event loop,
    whatever stderr is connected to (a slow terminal, a full pipe)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log_queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(log_queue, handler, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = load_settings(args)
        from adapter.app import create_app

        app = create_app(settings)
    except ValidationError as exc:
        sys.exit(f"vllm-ollama-adapter: invalid settings: {describe_validation_error(exc)}")
    except CatalogError as exc:
        sys.exit(f"vllm-ollama-adapter: {exc}")

    import uvicorn

    configure_logging(settings.adapter_log_level)
    try:
        uvicorn.run(
            app,
            host=settings.adapter_host,
            port=settings.adapter_port,
            log_level=settings.adapter_log_level,
            log_config=None,  # keep the queue-based handlers set up above
            access_log=False,  # the gateway writes its own structured access line
            timeout_graceful_shutdown=5,
            server_header=False,
        )
    except OSError as exc:  # port taken, address not available
        sys.exit(f"vllm-ollama-adapter: cannot listen on {settings.adapter_host}:{settings.adapter_port}: {exc}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
