#!/usr/bin/env bash
# Switch the docker-compose.vllm.yml stack between its two modes, one LLM server at a time:
#
#   scripts/switch_mode.sh chat        vllm + vllm-adapter (ADAPTER_MODE=chat) + ollama-vision
#   scripts/switch_mode.sh ingestion   vllm-ingestion + vllm-adapter-ingestion + ollama-vision
#   scripts/switch_mode.sh status      what runs, its health, GPU memory; warns (exit 2)
#                                      when both LLM servers are running
#
# chat|ingestion stops the other mode's gateway and LLM server, waits for the GPU memory to
# be released, starts this mode's services and returns once every one of them is healthy
# (exit 1 with the failing service's last log lines otherwise). Running it again in the
# mode already up changes nothing. ollama-vision belongs to both modes and keeps running.
#
# Environment (all optional):
#   COMPOSE                 compose command, e.g. "docker-compose" (default: "docker compose"
#                           if it works, else docker-compose)
#   VLLM_COMPOSE_FILE       compose file (default: docker-compose.vllm.yml at the repo root)
#   SWITCH_HEALTH_TIMEOUT   seconds to wait for health (default 2400: a first start
#                           downloads the model)
#   SWITCH_GPU_TIMEOUT      seconds to wait for GPU memory release (default 120)
#   SWITCH_GPU_MAX_USED_MIB also wait until the GPUs' used memory (MiB, summed) is at most this
#   SWITCH_POLL_INTERVAL    seconds between health polls (default 5)
#   SWITCH_GPU_POLL_INTERVAL  seconds between GPU memory readings (default 1)
#
# Everything else (CHAT_MODEL, INGEST_MODEL, ...) is read by the compose file: set it the
# same way as for `docker compose up` (shell or .env).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_PATH="${VLLM_COMPOSE_FILE:-$ROOT/docker-compose.vllm.yml}"
HEALTH_TIMEOUT="${SWITCH_HEALTH_TIMEOUT:-2400}"
GPU_TIMEOUT="${SWITCH_GPU_TIMEOUT:-120}"
GPU_MAX_USED_MIB="${SWITCH_GPU_MAX_USED_MIB:-}"
POLL="${SWITCH_POLL_INTERVAL:-5}"
GPU_POLL="${SWITCH_GPU_POLL_INTERVAL:-1}"

# Start order = health-wait order: the LLM server, Ollama Vision, then the gateway.
CHAT_SERVICES=(vllm ollama-vision vllm-adapter)
INGESTION_SERVICES=(vllm-ingestion ollama-vision vllm-adapter-ingestion)
# Stop order: the gateway first (clients get "connection refused", not errors from a
# gateway whose backend vanished), then its LLM server.
CHAT_ONLY=(vllm-adapter vllm)
INGESTION_ONLY=(vllm-adapter-ingestion vllm-ingestion)
ALL_SERVICES=(vllm vllm-adapter vllm-ingestion vllm-adapter-ingestion ollama-vision)

log() { printf 'switch_mode: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    printf 'usage: %s chat|ingestion|status\n' "$(basename "$0")" >&2
    exit 64
}

[[ $# -eq 1 ]] || usage
case "$1" in chat | ingestion | status) ;; *) usage ;; esac
target="$1"

[[ -f "$COMPOSE_PATH" ]] || die "compose file not found: $COMPOSE_PATH (set VLLM_COMPOSE_FILE)"

for value in "$HEALTH_TIMEOUT" "$GPU_TIMEOUT"; do
    [[ "$value" =~ ^[0-9]+$ ]] || die "SWITCH_HEALTH_TIMEOUT and SWITCH_GPU_TIMEOUT are whole seconds; got '$value'"
done

if [[ -n "${COMPOSE:-}" ]]; then
    read -r -a compose_cmd <<<"$COMPOSE"
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' was found; install Docker Compose"
fi

# --profile ingestion makes the ingestion services visible to ps/stop as well; `up` below
# always names its services, so it never starts both modes.
compose() { "${compose_cmd[@]}" -f "$COMPOSE_PATH" --profile ingestion "$@"; }

# Fills the array `running` with the services that are up; dies when Compose cannot tell.
list_running() {
    local out
    out="$(compose ps --services --filter status=running)" ||
        die "cannot list the services ('${compose_cmd[*]} ps' failed): is Docker running, and may this user use it?"
    running=()
    [[ -z "$out" ]] || mapfile -t running <<<"$out"
}

is_in() {
    local needle="$1" item
    shift
    for item in "$@"; do [[ "$item" == "$needle" ]] && return 0; done
    return 1
}

# "state|health|restarts" of a service's container; "absent||0" when it has none.
container_state() {
    local cid
    cid="$(compose ps -a -q "$1" 2>/dev/null | head -n 1 || true)"
    if [[ -z "$cid" ]]; then
        printf 'absent||0\n'
        return
    fi
    docker inspect --format '{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}|{{.RestartCount}}' "$cid" 2>/dev/null ||
        printf 'absent||0\n'
}

gpu_used_mib() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null |
        awk '{ used += $1 } END { printf "%d\n", used }'
}

gpu_summary() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader 2>/dev/null |
            sed 's/^/  GPU /' || true
    else
        printf '  (nvidia-smi not found)\n'
    fi
}

# After `compose stop` the servers' processes are gone; the driver frees their memory a
# moment later. Wait until the reading stops changing (3 equal polls, within 64 MiB) and,
# when SWITCH_GPU_MAX_USED_MIB is set, is at most that.
wait_gpu_release() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        log "nvidia-smi not found: waiting 10s for the GPU memory to be released"
        sleep 10
        return
    fi
    local deadline=$((SECONDS + GPU_TIMEOUT)) prev=-1 stable=0 used
    while :; do
        used="$(gpu_used_mib)"
        if ((prev >= 0 && used - prev <= 64 && prev - used <= 64)); then
            stable=$((stable + 1))
        else
            stable=0
        fi
        prev="$used"
        if ((stable >= 2)) && { [[ -z "$GPU_MAX_USED_MIB" ]] || ((used <= GPU_MAX_USED_MIB)); }; then
            log "GPU memory released: ${used} MiB in use"
            return
        fi
        if ((SECONDS >= deadline)); then
            log "warning: GPU memory still changing or above SWITCH_GPU_MAX_USED_MIB after ${GPU_TIMEOUT}s (${used} MiB in use); starting anyway"
            return
        fi
        sleep "$GPU_POLL"
    done
}

show_logs_and_die() {
    local svc="$1" why="$2"
    log "error: $svc $why. Its last log lines:"
    compose logs --tail 40 "$svc" >&2 || true
    die "$svc $why; see the troubleshooting part of the README's Deployment section"
}

wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) svc state health restarts first_restarts next_note
    for svc in "$@"; do
        first_restarts=""
        next_note=$((SECONDS + 60))
        while :; do
            IFS='|' read -r state health restarts <<<"$(container_state "$svc")"
            restarts="${restarts:-0}"
            [[ -n "$first_restarts" ]] || first_restarts="$restarts"
            if [[ "$state" == running && ("$health" == healthy || "$health" == none) ]]; then
                log "$svc: healthy"
                break
            fi
            case "$state" in
                absent) show_logs_and_die "$svc" "has no container after 'up'" ;;
                exited | dead) show_logs_and_die "$svc" "stopped ($state)" ;;
            esac
            if ((restarts > first_restarts)); then
                show_logs_and_die "$svc" "crashed and was restarted"
            fi
            if ((SECONDS >= deadline)); then
                show_logs_and_die "$svc" "is not healthy after ${HEALTH_TIMEOUT}s (state: $state, health: ${health:-none})"
            fi
            if ((SECONDS >= next_note)); then
                log "$svc: ${health:-$state}, waiting (a first start downloads the model)"
                next_note=$((SECONDS + 60))
            fi
            sleep "$POLL"
        done
    done
}

print_status() {
    local running=() svc state health restarts llm_chat="" llm_ingest=""
    list_running
    is_in vllm "${running[@]}" && llm_chat=yes
    is_in vllm-ingestion "${running[@]}" && llm_ingest=yes
    if [[ -n "$llm_chat" && -n "$llm_ingest" ]]; then
        printf 'mode: BOTH (vllm and vllm-ingestion are running)\n'
    elif [[ -n "$llm_chat" ]]; then
        printf 'mode: chat\n'
    elif [[ -n "$llm_ingest" ]]; then
        printf 'mode: ingestion\n'
    else
        printf 'mode: none (no LLM server running)\n'
    fi
    printf 'services:\n'
    for svc in "${ALL_SERVICES[@]}"; do
        IFS='|' read -r state health restarts <<<"$(container_state "$svc")"
        [[ "$state" == absent ]] && continue
        printf '  %-24s %s%s\n' "$svc" "$state" "${health:+ ($health)}"
    done
    printf 'gpu:\n'
    gpu_summary
    if [[ -n "$llm_chat" && -n "$llm_ingest" ]]; then
        log "WARNING: both LLM servers (vllm and vllm-ingestion) are running; on one GPU they compete for memory. Run '$0 chat' or '$0 ingestion' to keep one."
        return 2
    fi
    return 0
}

switch_to() {
    local mode="$1" start=() stop=() running=() to_stop=() svc
    if [[ "$mode" == chat ]]; then
        start=("${CHAT_SERVICES[@]}")
        stop=("${INGESTION_ONLY[@]}")
    else
        start=("${INGESTION_SERVICES[@]}")
        stop=("${CHAT_ONLY[@]}")
    fi
    list_running
    for svc in "${stop[@]}"; do
        if is_in "$svc" "${running[@]}"; then to_stop+=("$svc"); fi
    done

    if ((${#to_stop[@]} > 0)); then
        log "stopping ${to_stop[*]}"
        compose stop "${to_stop[@]}"
        wait_gpu_release
    else
        log "nothing of the other mode is running"
    fi

    log "starting $mode mode: ${start[*]}"
    compose up -d "${start[@]}"
    wait_healthy "${start[@]}"
    log "$mode mode is up and healthy"
}

# One switch at a time.
if [[ "$target" != status ]] && command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/vllm-ollama-switch-mode.lock"
    flock -n 9 || die "another switch_mode.sh is running"
fi

if [[ "$target" == status ]]; then
    print_status
else
    switch_to "$target"
fi
