#!/usr/bin/env bash
# Start the gateway: installs into .venv on first use, then runs `python -m adapter` with any flags,
# e.g. ./scripts/serve.sh --port 11434 --vllm-url http://localhost:8000
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" >&2
exec "$root/.venv/bin/python" -m adapter "$@"
