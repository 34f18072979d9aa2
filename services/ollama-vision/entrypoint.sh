#!/usr/bin/env bash
# Ollama Vision: starts `ollama serve`, pulls the configured vision and embedding models
# that are not already in the model volume, then stays up as long as the server does.
#
#   VISION_MODELS   models to have, separated by spaces or commas
#                   (default: "llava:7b nomic-embed-text"; set it empty to pull none)
#   PULL_RETRIES    attempts per model before giving up (default 3)
#   PULL_RETRY_DELAY  seconds before the 2nd attempt, doubled, tripled... after (default 5)
#
# The container reports healthy (see healthcheck.sh) only once every model is present:
# a model that cannot be pulled leaves the server up, serving what it has, but unhealthy,
# with the reason in `docker compose logs ollama-vision`.
set -euo pipefail

READY_FILE="${OLLAMA_VISION_READY_FILE:-/tmp/ollama-vision.ready}"
models_spec="${VISION_MODELS-llava:7b nomic-embed-text}"
retries="${PULL_RETRIES:-3}"
delay="${PULL_RETRY_DELAY:-5}"
if ! [[ "$retries" =~ ^[1-9][0-9]*$ && "$delay" =~ ^[0-9]+$ ]]; then
    printf 'ollama-vision: error: PULL_RETRIES must be a positive integer and PULL_RETRY_DELAY a whole number of seconds; got %s and %s\n' "'$retries'" "'$delay'" >&2
    exit 64
fi

log() { printf 'ollama-vision: %s\n' "$*" >&2; }

rm -f "$READY_FILE"

ollama serve &
server_pid=$!
child_pid=""

# `docker stop` sends SIGTERM to this script (PID 1): pass it on to the server and to a
# pull in progress, then leave with the server's status.
# shellcheck disable=SC2317  # invoked by the trap below
on_signal() {
    log "stopping"
    if [[ -n "$child_pid" ]]; then kill -TERM "$child_pid" 2>/dev/null || true; fi
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" || exit $?
    exit 0
}
trap on_signal TERM INT

# Wait for the API to answer (the server is fast to start; the pulls are what take time).
for _ in $(seq 1 120); do
    if ollama list >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        log "error: ollama serve exited during start-up"
        wait "$server_pid" || exit $?
        exit 1
    fi
    sleep 1
done

# Run a command in the background and wait for it, so a signal is handled at once.
run() {
    "$@" &
    child_pid=$!
    local status=0
    wait "$child_pid" || status=$?
    child_pid=""
    return "$status"
}

read -r -a models <<<"${models_spec//,/ }"
failed=()
for model in "${models[@]}"; do
    if ollama show "$model" >/dev/null 2>&1; then
        log "$model: already present, not pulling"
        continue
    fi
    pulled=""
    for attempt in $(seq 1 "$retries"); do
        log "$model: pulling (attempt $attempt of $retries)"
        if run ollama pull "$model"; then
            pulled=yes
            break
        fi
        if ((attempt < retries)); then run sleep $((attempt * delay)); fi
    done
    if [[ -z "$pulled" ]]; then
        log "error: $model could not be pulled; check the name and the network (VISION_MODELS=${models_spec})"
        failed+=("$model")
    fi
done

if ((${#failed[@]} == 0)); then
    touch "$READY_FILE"
    log "ready: ${models[*]:-no models requested}"
else
    log "error: not ready, missing: ${failed[*]}; the server stays up with the models it has"
fi

status=0
wait "$server_pid" || status=$?
exit "$status"
