"""Tenants: who a request's API key belongs to, and the prefix-cache salt of that tenant.

ADAPTER_API_KEYS_FILE (YAML) names the tenants and the SHA-256 digests of their keys:

    tenants:
      acme:
        - sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
      globex:
        - sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9

Only digests are stored, so the file leaks no key. Each tenant also has a random secret, kept
apart from the keys file in a state file next to it (`<keys file>.secrets`, JSON, mode 0600): the
keys file is the operator's (edited by hand, maybe in version control), the secrets are the
gateway's own (written by it, never to be shared). A tenant without a secret gets one at start.

Every vLLM request of a tenant carries `cache_salt` = HMAC-SHA256(secret, name): vLLM mixes the
salt into the hash of the prompt's first cached block, so two tenants never share prefix-cache
blocks and cannot time each other's prompts. Rotating the secret (`python -m adapter tenant
rotate NAME`, then SIGHUP) changes the salt: the tenant's cached prefixes can no longer be reached.

Why looking a key up by its digest is constant-time enough: the presented key is hashed first,
and the lookup compares digests. How long the lookup takes depends on the digest of what the client
sent, never on how many leading characters of a stored key it got right, so timing tells an
attacker nothing about a stored key (finding a key whose digest is near a stored one is a preimage
attack on SHA-256).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapter.yamlfile import YamlFileError, read_yaml

DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# A tenant's name is a metrics label and an access-log field: short, plain characters.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The tenant ADAPTER_API_KEY stands for, alone or next to a keys file.
DEFAULT_TENANT = "default"
_SALT_CONTEXT = b"vllm-ollama-adapter cache_salt v1\x00"


class TenantsError(ValueError):
    """A keys or secrets file the gateway cannot use; the message is one line naming the problem."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    cache_salt: str | None  # None: no salt is sent (ADAPTER_API_KEY alone: there is nobody to isolate from)


def key_digest(key: str | bytes) -> str:
    """What the keys file stores for a key: `sha256:` and the hex digest of its UTF-8 bytes."""
    raw = key.encode() if isinstance(key, str) else key
    return DIGEST_PREFIX + hashlib.sha256(raw).hexdigest()


def secrets_path(keys_file: Path) -> Path:
    return keys_file.with_name(keys_file.name + ".secrets")


def cache_salt(secret: str, name: str) -> str:
    """64 hex characters: within vLLM's limits (at most 128, no '@', '/', '\\' or NUL)."""
    return hmac.new(bytes.fromhex(secret), _SALT_CONTEXT + name.encode(), hashlib.sha256).hexdigest()


def read_keys_file(path: Path) -> dict[str, list[str]]:
    """tenant name -> key digests, checked: a bad file raises TenantsError naming what is wrong."""
    where = f"ADAPTER_API_KEYS_FILE {path}"
    try:
        data = read_yaml(path, where)
    except YamlFileError as exc:
        raise TenantsError(str(exc)) from None
    if not isinstance(data, dict) or set(data) != {"tenants"} or not isinstance(data["tenants"], dict):
        raise TenantsError(f"{where}: expected one mapping `tenants:` of tenant name -> list of key digests")
    tenants: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for raw_name, digests in data["tenants"].items():
        name = "" if raw_name is None else str(raw_name).strip()
        if not name:
            raise TenantsError(f"{where}: a tenant has an empty name")
        if not _NAME.match(name):
            raise TenantsError(
                f"{where}: tenant name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a "
                "letter or digit)"
            )
        if isinstance(digests, str):
            digests = [digests]
        if not isinstance(digests, list) or not digests:
            raise TenantsError(f"{where}: tenant {name!r} needs a list of one or more key digests")
        for digest in digests:
            digest = str(digest).strip().lower()
            if not _DIGEST.match(digest):
                raise TenantsError(
                    f"{where}: tenant {name!r}: {str(digest)[:20]!r}... is not a key digest "
                    "(sha256: and 64 hex digits; make one with `python -m adapter tenant hash-key`)"
                )
            if digest in owner:
                other = owner[digest]
                whose = f"tenants {other!r} and {name!r}" if other != name else f"tenant {name!r} twice"
                raise TenantsError(f"{where}: duplicate key: the same key is listed for {whose}")
            owner[digest] = name
        tenants[name] = [d.strip().lower() for d in digests]
    if not tenants:
        raise TenantsError(f"{where}: names no tenant")
    return tenants


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (the main process, worker processes on SIGHUP, `tenant rotate`)."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_secrets(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TenantsError(f"tenant secrets file {path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in data.values()
    ):
        raise TenantsError(f"tenant secrets file {path}: expected a JSON object of tenant name -> 64 hex digits")
    return data


def _write_secrets(path: Path, secrets_by_name: dict[str, str]) -> None:
    # Written beside and renamed over: a reader never sees half a file.
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(secrets_by_name, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(partial, path)


def ensure_secrets(path: Path, names: list[str]) -> dict[str, str]:
    """The secrets of these tenants, creating the missing ones (kept: a restart keeps the salts,
    so the tenants' cached prefixes stay reachable)."""
    stored = _read_secrets(path)
    if all(n in stored for n in names):
        # Nothing to write, so no lock: the file may be mounted read-only (a Kubernetes Secret shared
        # by several gateway pods, so they all send a tenant the same salt).
        return {n: stored[n] for n in names}
    try:
        with _locked(path):
            stored = _read_secrets(path)
            stored.update({n: secrets.token_hex(32) for n in names if n not in stored})
            _write_secrets(path, stored)
    except OSError as exc:
        raise TenantsError(f"tenant secrets file {path}: cannot write it ({exc.strerror or exc})") from None
    return {n: stored[n] for n in names}


def rotate(keys_file: Path, name: str) -> None:
    """A new secret for `name`: once the gateway reloads, its cached prefixes are out of reach."""
    tenants = read_keys_file(keys_file)
    if name not in tenants:
        raise TenantsError(f"no tenant {name!r} in ADAPTER_API_KEYS_FILE {keys_file}")
    path = secrets_path(keys_file)
    try:
        with _locked(path):
            stored = _read_secrets(path)
            stored[name] = secrets.token_hex(32)
            _write_secrets(path, stored)
    except OSError as exc:
        raise TenantsError(f"tenant secrets file {path}: cannot write it ({exc.strerror or exc})") from None


class TenantKeys:
    """digest of a key -> its tenant; replaced whole on reload (SIGHUP), read once per request."""

    def __init__(self, by_digest: dict[str, Tenant]) -> None:
        self._by_digest = by_digest

    @property
    def names(self) -> list[str]:
        return sorted({t.name for t in self._by_digest.values()})

    def lookup(self, key: bytes) -> Tenant | None:
        # By the presented key's digest: see the module's docstring for why this is constant-time enough.
        return self._by_digest.get(key_digest(key))


def load_tenants(keys_file: Path | None, api_key: str | None) -> TenantKeys | None:
    """The keys in force: ADAPTER_API_KEYS_FILE's tenants, plus ADAPTER_API_KEY as tenant "default";
    None when neither is set (no auth). Raises TenantsError."""
    by_digest: dict[str, Tenant] = {}
    if keys_file is None:
        if api_key is None:
            return None
        return TenantKeys({key_digest(api_key): Tenant(DEFAULT_TENANT, None)})
    tenants = read_keys_file(keys_file)
    if api_key is not None:
        if DEFAULT_TENANT in tenants:
            raise TenantsError(
                f"ADAPTER_API_KEYS_FILE {keys_file}: names a tenant {DEFAULT_TENANT!r}, which ADAPTER_API_KEY "
                "stands for; rename one of them"
            )
        digest = key_digest(api_key)
        for name, digests in tenants.items():
            if digest in digests:
                raise TenantsError(f"duplicate key: ADAPTER_API_KEY is also a key of tenant {name!r}")
        tenants[DEFAULT_TENANT] = [digest]
    secret_of = ensure_secrets(secrets_path(keys_file), list(tenants))
    for name, digests in tenants.items():
        tenant = Tenant(name, cache_salt(secret_of[name], name))
        by_digest.update(dict.fromkeys(digests, tenant))
    return TenantKeys(by_digest)


class KeyRing:
    """The keys in force, shared by the middleware (read per request) and the SIGHUP reload."""

    def __init__(self, keys_file: Path | None, api_key: str | None) -> None:
        self.keys_file = keys_file
        self.api_key = api_key
        self.keys = load_tenants(keys_file, api_key)

    def reload(self) -> None:
        """Read the keys and secrets again (a rotated secret takes effect); raises TenantsError and
        keeps the keys in force when the file went bad."""
        self.keys = load_tenants(self.keys_file, self.api_key)
