#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv in .venv and install the package with its test extras.
# Sourced by serve.sh and test.sh; safe to run again (pip skips what is already there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "== creating $root/.venv"
  "$python" -m venv "$root/.venv"
fi
stamps="$root/.venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
stamp="$stamps-${1:-run}"
# The test extras are a superset of a plain install: after scripts/test.sh, serve.sh installs nothing.
if [ ! -f "$stamp" ] && { [ -n "${1:-}" ] || [ ! -f "$stamps-test" ]; }; then
  echo "== installing vllm-ollama-adapter ${1:+[$1]} into .venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$root${1:+[$1]}"
  touch "$stamp"
fi
