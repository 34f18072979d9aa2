"""`python -m adapter warm FILE`: fill every replica's prefix cache with a model's high-traffic prompts.

vLLM's prefix cache (`--enable-prefix-caching`) keeps the KV blocks of prompts it has seen, so a
request whose start was seen before skips most of its prompt processing. It is per replica, and the
gateway sends a prefix to one home replica, so after a restart or a roll-out each replica would learn
a service's system prompt only from that service's first requests. This sends each template (a
system prompt and the start of the user message) once to every replica of its model, through the
gateway's own translation (so the chat template vLLM renders is the one real traffic gets), with
`num_predict: 1`: one prompt pass, one token.

Which replicas a model has is read from the gateway's /health (each replica lists the model names
it answers); each request is pinned to its replica by the REPLICA_HEADER, which the gateway honours
only for a replica of that model. Every request has a timeout and at most `concurrency` are in flight,
so the command ends: 0 when every template reached every replica, 1 naming what failed, 2 when it
cannot run at all (a bad file, the gateway unreachable).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapter.catalog import normalize_name
from adapter.routing import REPLICA_HEADER
from adapter.yamlfile import YamlFileError, read_yaml

# /health's entry for Ollama Vision: not a vLLM backend, nothing to warm there.
VISION_ENTRY = "ollama_vision"


class WarmError(Exception):
    """The command cannot run at all (exit 2); the message is its one line."""


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None  # how the report names it (default: its position)
    system: str = ""
    prefix: str = Field(min_length=1)  # the fixed start of the user message


class TemplatesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Ollama-facing model name (or a task alias) -> its templates.
    models: dict[str, list[Template]] = Field(min_length=1)

    @model_validator(mode="after")
    def _non_empty(self) -> TemplatesFile:
        for model, templates in self.models.items():
            if not templates:
                raise ValueError(f"model {model!r} has no templates")
        return self


def load_templates(path: Path) -> TemplatesFile:
    try:
        raw = read_yaml(path, str(path))
    except YamlFileError as exc:
        raise WarmError(str(exc)) from None
    if not isinstance(raw, dict):
        raise WarmError(f"{path}: the top level must be a mapping with a `models:` mapping of model -> templates")
    try:
        return TemplatesFile.model_validate(raw)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise WarmError(f"{path}: {where}") from None


@dataclass(frozen=True, slots=True)
class Target:
    """One replica of a model, as /health lists it."""

    backend: str
    url: str
    status: str


@dataclass(slots=True)
class Outcome:
    template: str
    ok: bool
    detail: str  # prompt tokens when it worked, the reason when not


def replicas_of(health: dict[str, Any], model: str) -> list[Target]:
    """Every vLLM replica that answers `model` (by name or alias), across backends (a canary's too)."""
    key = normalize_name(model)
    found: list[Target] = []
    backends = health.get("backends")
    for backend, group in (backends if isinstance(backends, dict) else {}).items():
        if backend == VISION_ENTRY or not isinstance(group, dict):
            continue
        for replica in group.get("replicas") or ():
            names = replica.get("models") or ()
            if any(normalize_name(str(n)) == key for n in names):
                found.append(Target(backend, str(replica["url"]), str(replica.get("status"))))
    return found


def served_names(health: dict[str, Any]) -> list[str]:
    backends = health.get("backends")
    names = {
        str(n)
        for backend, group in (backends if isinstance(backends, dict) else {}).items()
        if backend != VISION_ENTRY and isinstance(group, dict)
        for replica in group.get("replicas") or ()
        for n in replica.get("models") or ()
    }
    return sorted(names)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def read_health(session: aiohttp.ClientSession, gateway: str) -> dict[str, Any]:
    try:
        async with session.get(f"{gateway}/health") as response:
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise WarmError(f"cannot reach the gateway at {gateway}: {_short(str(exc) or type(exc).__name__)}") from None
    # 503 is still a report (no backend healthy): the replicas are listed, and warming says which fail.
    if status not in (200, 503):
        raise WarmError(f"{gateway}/health answered HTTP {status}: {_short(raw.decode(errors='replace'))}")
    try:
        health = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise WarmError(f"{gateway}/health did not answer JSON: is {gateway} the gateway?") from None
    if not isinstance(health, dict) or not isinstance(health.get("backends"), dict):
        raise WarmError(f"{gateway}/health has no backends: is {gateway} the gateway?")
    return health


async def send(
    session: aiohttp.ClientSession,
    gateway: str,
    model: str,
    target: Target,
    label: str,
    template: Template,
    headers: dict[str, str],
) -> Outcome:
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": template.prefix})
    body = {
        "model": model,
        "messages": messages,
        "stream": False,
        # One token: the prompt pass is what fills the cache; temperature 0 keeps it deterministic.
        "options": {"num_predict": 1, "temperature": 0},
    }
    try:
        async with session.post(
            f"{gateway}/api/chat", data=orjson.dumps(body), headers={**headers, REPLICA_HEADER: target.url}
        ) as response:
            raw = await response.read()
            status = response.status
    except TimeoutError:
        return Outcome(label, False, "timed out")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome(label, False, _short(str(exc) or type(exc).__name__))
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if status != 200 or not isinstance(answer, dict) or "error" in answer or not answer.get("done"):
        message = (
            answer.get("error") if isinstance(answer, dict) and "error" in answer else raw.decode(errors="replace")
        )
        return Outcome(label, False, f"HTTP {status}: {_short(str(message))}")
    return Outcome(label, True, f"{answer.get('prompt_eval_count', '?')} prompt tokens")


async def warm(
    gateway: str,
    plan: TemplatesFile,
    *,
    concurrency: int = 4,
    request_timeout: float = 60.0,
    api_key: str | None = None,
) -> int:
    """Warm every replica of every model in `plan`; print a line per model and replica. Returns the
    exit status (raises WarmError when it cannot run at all)."""
    gateway = gateway.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # A total per request: a gateway or replica that accepts and then never answers cannot hold it.
    limits = aiohttp.ClientTimeout(total=request_timeout, connect=min(request_timeout, 10.0))
    gate = asyncio.Semaphore(max(concurrency, 1))
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=limits) as session:
        health = await read_health(session, gateway)

        async def bounded(model: str, target: Target, label: str, template: Template) -> Outcome:
            async with gate:
                return await send(session, gateway, model, target, label, template, headers)

        failed = False
        plans: list[tuple[str, Target]] = []
        work = []
        for model, templates in plan.models.items():
            targets = replicas_of(health, model)
            if not targets:
                failed = True
                known = ", ".join(served_names(health)) or "none"
                print(f"warm: model {model!r} is not served by any vLLM replica of {gateway} (it serves: {known})")
                continue
            labels = [t.name or f"template {i + 1}" for i, t in enumerate(templates)]
            for target in targets:
                plans.append((model, target))
                work.append(
                    asyncio.gather(*(bounded(model, target, lb, t) for lb, t in zip(labels, templates, strict=True)))
                )
        results: list[list[Outcome]] = await asyncio.gather(*work)
    requests = warmed = 0
    for (model, target), outcomes in zip(plans, results, strict=True):
        good = [o for o in outcomes if o.ok]
        requests += len(outcomes)
        warmed += len(good)
        state = "" if target.status in ("healthy", "unknown") else f", {target.status}"
        where = f"{model} @ {target.url} ({target.backend}{state})"
        if len(good) == len(outcomes):
            print(f"  ok    {where}: {len(good)}/{len(outcomes)} templates ({', '.join(o.detail for o in outcomes)})")
        else:
            failed = True
            print(f"  FAIL  {where}: {len(good)}/{len(outcomes)} templates")
            for outcome in outcomes:
                if not outcome.ok:
                    print(f"          {outcome.template}: {outcome.detail}")
    replicas = len(plans)
    print(
        f"warm: {warmed} of {requests} templates warmed on {replicas} replica(s) "
        f"in {time.monotonic() - started:.1f} s" + ("; some failed" if failed else "")
    )
    return 1 if failed else 0


def run(path: Path, gateway: str, *, concurrency: int, timeout: float, api_key: str | None) -> int:
    try:
        plan = load_templates(path)
        return asyncio.run(warm(gateway, plan, concurrency=concurrency, request_timeout=timeout, api_key=api_key))
    except WarmError as exc:
        print(f"warm: {exc}")
        return 2
