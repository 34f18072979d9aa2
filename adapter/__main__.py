"""`python -m adapter` / `vllm-ollama-adapter`: parse flags, load settings, run uvicorn (one process or
ADAPTER_WORKERS of them on one port); `canary-check MODEL` smoke-tests a canary; `warm FILE` fills
every replica's prefix cache with high-traffic prompt templates; `tenant rotate NAME` and
`tenant hash-key` manage ADAPTER_API_KEYS_FILE's tenants."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adapter.catalog import Catalog, CatalogError, load_catalog
from adapter.config import Settings, describe_validation_error
from adapter.metrics import forget_workers, live_gauge_pids, multiprocess
from adapter.process import prepare
from adapter.tenants import TenantsError, key_digest, load_tenants, rotate


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
    parser.add_argument("--workers", type=int, help="worker processes on one port (env ADAPTER_WORKERS, default 1)")
    parser.epilog = (
        "Also: vllm-ollama-adapter canary-check MODEL, vllm-ollama-adapter warm FILE, "
        "vllm-ollama-adapter tenant {rotate NAME,hash-key} (see each one's --help)."
    )
    return parser.parse_args(argv)


FLAG_VARIABLES = {
    "host": "ADAPTER_HOST",
    "port": "ADAPTER_PORT",
    "vllm_url": "VLLM_BASE_URL",
    "vision_url": "VISION_OLLAMA_URL",
    "models_file": "ADAPTER_MODELS_FILE",
    "workers": "ADAPTER_WORKERS",
}


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {variable.lower(): getattr(args, flag) for flag, variable in FLAG_VARIABLES.items()}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def check_backend_clashes(settings: Settings, catalog: Catalog) -> str | None:
    """A model two catalog backends both serve, unless the catalog names it: found at start, by
    asking each backend once (bounded by the connect timeout; backends that are down are skipped)."""
    if not catalog.backends:
        return None  # VLLM_BASE_URL's servers are one backend: servers listing one model are replicas

    async def ask() -> dict[str, tuple[str, ...]]:
        from adapter.gateway import Gateway
        from adapter.metrics import Metrics

        gateway = Gateway(settings, Metrics(), catalog)
        try:
            await asyncio.wait_for(gateway.router.refresh(vision=False), settings.adapter_connect_timeout + 1)
        except TimeoutError:
            pass
        finally:
            await gateway.aclose()
        return gateway.router.clashes

    logging.disable(logging.CRITICAL)  # the start-up answer is the one line below, not the router's log
    try:
        clashes = asyncio.run(ask())
    finally:
        logging.disable(logging.NOTSET)
    if not clashes:
        return None
    model, owners = next(iter(clashes.items()))
    return (
        f"ADAPTER_MODELS_FILE: model {model!r} is served by backends {', '.join(repr(o) for o in owners)}; "
        "name it in the catalog (models: - name: ..., backend: ...) to say which one answers"
    )


def check_tenants_and_tracing(settings: Settings) -> str | None:
    """The keys file read (and the missing tenant secrets made, once, before any worker starts), and
    the tracing extra present when tracing is asked for: a problem in one line, or None."""
    api_key = settings.adapter_api_key.get_secret_value() if settings.adapter_api_key else None
    try:
        load_tenants(settings.adapter_api_keys_file, api_key)
    except TenantsError as exc:
        return str(exc)
    if settings.llm_trace_exporter == "otlp":
        if not all(_spec_found(name) for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")):
            return "LLM_TRACE_EXPORTER=otlp needs the OpenTelemetry SDK: pip install 'vllm-ollama-adapter[tracing]'"
    return None


def _spec_found(name: str) -> bool:
    """Whether a module is installed, without importing it (a parent package is imported, but
    opentelemetry's top level is a namespace package: nothing runs)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def serve(argv: list[str] | None) -> None:
    args = parse_args(argv)
    try:
        settings = load_settings(args)
        catalog = load_catalog(settings.adapter_models_file) if settings.adapter_models_file else Catalog()
    except ValidationError as exc:
        sys.exit(f"vllm-ollama-adapter: invalid settings: {describe_validation_error(exc)}")
    except CatalogError as exc:
        sys.exit(f"vllm-ollama-adapter: {exc}")
    problem = check_tenants_and_tracing(settings)
    if problem:
        sys.exit(f"vllm-ollama-adapter: {problem}")
    clash = check_backend_clashes(settings, catalog)
    if clash:
        sys.exit(f"vllm-ollama-adapter: {clash}")

    import uvicorn

    from adapter.app import create_app

    prepare(settings.adapter_log_level)
    if multiprocess():  # the operator's own directory may hold a previous run's gauges
        forget_workers(live_gauge_pids())
    common: dict[str, Any] = {
        "host": settings.adapter_host,
        "port": settings.adapter_port,
        "log_level": settings.adapter_log_level,
        "log_config": None,  # keep the queue-based handlers set up in prepare()
        "access_log": False,  # the gateway writes its own structured access line
        "timeout_graceful_shutdown": 5,
        "server_header": False,
    }
    try:
        if settings.adapter_workers == 1:
            uvicorn.run(create_app(settings, catalog), **common)
        else:
            export_settings(args)
            with metrics_shared_between_workers():
                factory = "adapter.app:app_from_environment"
                run_workers(uvicorn.Config(factory, factory=True, workers=settings.adapter_workers, **common))
    except OSError as exc:  # port taken, address not available
        sys.exit(f"vllm-ollama-adapter: cannot listen on {settings.adapter_host}:{settings.adapter_port}: {exc}")


def run_workers(config: Any) -> None:
    """uvicorn's worker supervisor, except that SIGHUP reloads the catalog in every worker (each has
    its own handler) instead of restarting them, which would cut the streams in flight."""
    from uvicorn.supervisors import Multiprocess

    class Workers(Multiprocess):
        def handle_hup(self) -> None:
            for process in self.processes:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

        # A worker that died (and was replaced) or was retired (SIGTTOU) leaves its in-flight and
        # queue gauges in the shared directory; /metrics would count them for ever.
        def keep_subprocess_alive(self) -> None:
            before = self._pids()
            super().keep_subprocess_alive()
            forget_workers(before - self._pids())

        def handle_ttou(self) -> None:
            before = self._pids()
            super().handle_ttou()
            forget_workers(before - self._pids())

        def _pids(self) -> set[int]:
            return {process.pid for process in self.processes if process.pid is not None}

    with contextlib.suppress(KeyboardInterrupt):
        Workers(config, sockets=[config.bind_socket()]).run()


def export_settings(args: argparse.Namespace) -> None:
    """Worker processes read their settings from the environment: the flags go there too."""
    for flag, variable in FLAG_VARIABLES.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[variable] = str(value)


@contextlib.contextmanager
def metrics_shared_between_workers() -> Iterator[None]:
    """prometheus-client's multiprocess mode: each worker writes its values under one directory,
    and /metrics, whichever worker answers it, sums them."""
    if multiprocess():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="vllm-ollama-adapter-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def canary_check(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="vllm-ollama-adapter canary-check",
        description="Send real requests (chat, streamed chat, format, tools) to MODEL's canary backend "
        "through the gateway's own translation; exit 1 naming what failed.",
    )
    parser.add_argument("model", help="a model whose ADAPTER_MODELS_FILE entry names a canary")
    parser.add_argument("--models-file", help="YAML model catalog (env ADAPTER_MODELS_FILE)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    args = parser.parse_args(argv)
    try:
        overrides = {"adapter_models_file": args.models_file} if args.models_file else {}
        settings = Settings(**overrides)
        if settings.adapter_models_file is None:
            sys.exit("canary-check: no catalog: set ADAPTER_MODELS_FILE or --models-file")
        catalog = load_catalog(settings.adapter_models_file)
    except ValidationError as exc:
        sys.exit(f"canary-check: invalid settings: {describe_validation_error(exc)}")
    except CatalogError as exc:
        sys.exit(f"canary-check: {exc}")
    from adapter.canary import run

    sys.exit(run(args.model, settings, catalog, args.timeout))


def warm(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="vllm-ollama-adapter warm",
        description="Send each prompt template of FILE (per model: a system prompt and the start of the "
        "user message) with num_predict 1 to every replica of its model, through a running gateway, so "
        "every replica's prefix cache holds it. Exit 0 when all were warmed, 1 naming what failed, 2 when "
        "it cannot run (a bad file, the gateway unreachable).",
    )
    parser.add_argument("file", help="YAML: models: {MODEL: [{name, system, prefix}, ...], ...}")
    parser.add_argument(
        "--gateway",
        default=os.environ.get("OLLAMA_URL") or "http://127.0.0.1:11434",
        help="the gateway's URL (env OLLAMA_URL, default http://127.0.0.1:11434)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.timeout <= 0:
        sys.exit("warm: --concurrency must be at least 1 and --timeout above 0")
    from adapter.warm import run

    # The gateway's own key (ADAPTER_API_KEY), when it asks for one.
    api_key = os.environ.get("ADAPTER_API_KEY") or None
    sys.exit(run(Path(args.file), args.gateway, concurrency=args.concurrency, timeout=args.timeout, api_key=api_key))


def tenant_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="vllm-ollama-adapter tenant", description="Manage the tenants of ADAPTER_API_KEYS_FILE."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rotate_parser = commands.add_parser(
        "rotate",
        help="give a tenant a new secret: its prefix-cache salt changes, so its cached prefixes can no "
        "longer be reached; takes effect when the gateway reloads (SIGHUP)",
    )
    rotate_parser.add_argument("name", help="the tenant, as ADAPTER_API_KEYS_FILE names it")
    rotate_parser.add_argument("--keys-file", help="the keys file (env ADAPTER_API_KEYS_FILE)")
    commands.add_parser("hash-key", help="read a key on standard input, print the digest the keys file lists for it")
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        key = sys.stdin.readline().rstrip("\r\n")
        if not key:
            sys.exit("tenant hash-key: no key on standard input")
        print(key_digest(key))
        return
    try:
        overrides = {"adapter_api_keys_file": args.keys_file} if args.keys_file else {}
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.exit(f"tenant rotate: invalid settings: {describe_validation_error(exc)}")
    if settings.adapter_api_keys_file is None:
        sys.exit("tenant rotate: no keys file: set ADAPTER_API_KEYS_FILE or --keys-file")
    try:
        rotate(settings.adapter_api_keys_file, args.name)
    except TenantsError as exc:
        sys.exit(f"tenant rotate: {exc}")
    print(
        f"tenant {args.name!r}: new secret; its cached prefixes are unreachable once the gateway reloads "
        "(send it SIGHUP: kill -HUP <pid>, docker compose kill -s HUP vllm-adapter)"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["canary-check"]:
        canary_check(argv[1:])
    elif argv[:1] == ["warm"]:
        warm(argv[1:])
    elif argv[:1] == ["tenant"]:
        tenant_command(argv[1:])
    else:
        serve(argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
