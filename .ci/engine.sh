#!/usr/bin/env bash
# Start or stop a local Docker engine for tests and CI.
#
#   .ci/engine.sh start      # install docker.io if needed, start dockerd, wait for it
#   .ci/engine.sh stop       # stop the dockerd that `start` launched, clean up its network
#   .ci/engine.sh status     # say whether an engine answers and who started it
#
# `start` does nothing when an engine already answers (it records that it did
# not start one, so `stop` leaves that engine alone).  `stop` only ever signals
# the dockerd whose PID `start` saved, then removes the docker0 bridge and the
# iptables chains dockerd created.  Both are safe to run more than once.
#
# Environment:
#   DOCKER_ENGINE_STATE_DIR  pid file, log and saved host settings
#                            (default: /tmp/tabml-docker-engine)
#   DOCKER_ENGINE_TIMEOUT    seconds to wait for `docker info` (default: 60)
#   DOCKERD_EXTRA_ARGS       extra dockerd flags, word-split
#
# Needs root.  Uses Debian's docker.io package (/usr/sbin/dockerd, /usr/bin/docker).
set -euo pipefail

STATE_DIR=${DOCKER_ENGINE_STATE_DIR:-/tmp/tabml-docker-engine}
PID_FILE=$STATE_DIR/dockerd.pid
LOG_FILE=$STATE_DIR/dockerd.log
EXTERNAL_MARK=$STATE_DIR/external-engine
SAVED_SETTINGS=$STATE_DIR/host-settings
TIMEOUT=${DOCKER_ENGINE_TIMEOUT:-60}

log() { printf '[engine] %s\n' "$*"; }
die() { printf '[engine] ERROR: %s\n' "$*" >&2; exit 1; }

docker_cli() {
    if [[ -x /usr/bin/docker ]]; then
        echo /usr/bin/docker
    elif command -v docker >/dev/null 2>&1; then
        command -v docker
    else
        return 1
    fi
}

engine_answers() {
    local cli
    cli=$(docker_cli) || return 1
    timeout 10 "$cli" info >/dev/null 2>&1
}

# True when $1 is the PID of a running dockerd.
is_dockerd() {
    local pid=$1 comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == dockerd ]]
}

saved_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(<"$PID_FILE")
    is_dockerd "$pid" || return 1
    echo "$pid"
}

# MTU of the interface carrying the default route; containers must not use a
# larger one, or large TLS records stall on links with a small MTU.
uplink_mtu() {
    local dev
    dev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
    [[ -n $dev && -r /sys/class/net/$dev/mtu ]] || return 1
    cat "/sys/class/net/$dev/mtu"
}

# Debian's docker.io puts dockerd in /usr/sbin.
find_dockerd() {
    local candidate
    for candidate in /usr/sbin/dockerd /usr/bin/dockerd; do
        if [[ -x $candidate ]]; then
            echo "$candidate"
            return 0
        fi
    done
    command -v dockerd 2>/dev/null
}

# Prints the dockerd path, installing docker.io first when there is none.
install_docker() {
    if find_dockerd; then
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "dockerd is missing and installing docker.io needs root"
    log "installing docker.io (apt-get) ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    {
        apt-get update -q
        apt-get install -y -q --no-install-recommends docker.io
    } >&2
    find_dockerd || die "docker.io installed but dockerd is still missing"
}

# Remember what dockerd changes on the host so `stop` can put it back.  An
# existing file holds values not yet restored (dockerd died without `stop`):
# those are the host's originals, so keep them.
save_host_settings() {
    [[ -f $SAVED_SETTINGS ]] && return 0
    local forward policy=""
    forward=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo "")
    if command -v iptables >/dev/null 2>&1; then
        policy=$(iptables -t filter -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3; exit}') || policy=""
    fi
    printf 'ip_forward=%s\nforward_policy=%s\n' "$forward" "$policy" >"$SAVED_SETTINGS"
}

restore_host_settings() {
    [[ -f $SAVED_SETTINGS ]] || return 0
    local forward policy
    forward=$(sed -n 's/^ip_forward=//p' "$SAVED_SETTINGS")
    policy=$(sed -n 's/^forward_policy=//p' "$SAVED_SETTINGS")
    if [[ $policy =~ ^(ACCEPT|DROP)$ ]] && command -v iptables >/dev/null 2>&1; then
        iptables -t filter -P FORWARD "$policy" 2>/dev/null || true
    fi
    if [[ $forward =~ ^[01]$ ]]; then
        echo "$forward" >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
    fi
    rm -f "$SAVED_SETTINGS"
}

cmd_start() {
    mkdir -p "$STATE_DIR"

    local pid
    if pid=$(saved_pid) && engine_answers; then
        log "engine already running (started by this script, pid $pid, pid file $PID_FILE)"
        return 0
    fi
    if engine_answers; then
        log "a Docker engine already answers; not starting another one"
        rm -f "$PID_FILE"
        echo "engine found running at $(date -u +%FT%TZ); not started by engine.sh" >"$EXTERNAL_MARK"
        return 0
    fi
    rm -f "$EXTERNAL_MARK"
    if pid=$(saved_pid); then
        # Our dockerd is alive but does not answer: give it the normal wait below.
        log "dockerd (pid $pid) is running but not answering yet; waiting"
    else
        [[ $(id -u) -eq 0 ]] || die "starting dockerd needs root"
        local dockerd
        dockerd=$(install_docker)
        save_host_settings

        local -a args=(--storage-driver=overlay2)
        local mtu
        if mtu=$(uplink_mtu) && [[ $mtu =~ ^[0-9]+$ ]] && ((mtu < 1500)); then
            args+=("--mtu=$mtu")
        fi
        if [[ -n ${DOCKERD_EXTRA_ARGS:-} ]]; then
            local -a extra
            read -ra extra <<<"$DOCKERD_EXTRA_ARGS"
            args+=("${extra[@]}")
        fi

        log "starting $dockerd ${args[*]} (log: $LOG_FILE)"
        printf '\n=== %s engine.sh start ===\n' "$(date -u +%FT%TZ)" >>"$LOG_FILE"
        # New session: dockerd must outlive the shell (and process group) that started it.
        setsid "$dockerd" "${args[@]}" </dev/null >>"$LOG_FILE" 2>&1 &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi

    local waited=0
    until engine_answers; do
        if ! is_dockerd "$pid"; then
            log "dockerd exited during start-up; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            cleanup_network
            die "dockerd did not start"
        fi
        if ((waited >= TIMEOUT)); then
            log "no answer from dockerd after ${TIMEOUT}s; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2 || true
            die "dockerd (pid $pid) did not become ready; stop it with: $0 stop"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine ready after ${waited}s (dockerd pid $pid, pid file $PID_FILE)"
}

# Delete rules in built-in chains that point at docker's chains or bridges,
# then flush and delete docker's own chains.  Missing ones are ignored.
cleanup_iptables() {
    local cmd=$1 table rules rule chain
    local -a words chains
    command -v "$cmd" >/dev/null 2>&1 || return 0
    for table in filter nat mangle raw; do
        rules=$("$cmd" -t "$table" -S 2>/dev/null) || continue
        while IFS= read -r rule; do
            read -ra words <<<"$rule"
            [[ ${#words[@]} -gt 2 && ${words[0]} == -A && ${words[1]} != DOCKER* ]] || continue
            if [[ " $rule " == *" -j DOCKER"* || " $rule " =~ \ (docker0|br-[0-9a-f]{12})\  ]]; then
                "$cmd" -t "$table" -D "${words[@]:1}" 2>/dev/null || true
            fi
        done <<<"$rules"
        mapfile -t chains < <(awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' <<<"$rules")
        for chain in "${chains[@]}"; do
            "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in "${chains[@]}"; do
            "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

cleanup_network() {
    local link
    if ip link show docker0 >/dev/null 2>&1; then
        ip link delete docker0 2>/dev/null || true
        log "deleted bridge docker0"
    fi
    # Bridges of user-defined networks (docker compose) are named br-<12 hex>.
    while read -r link; do
        [[ $link =~ ^br-[0-9a-f]{12}$ ]] || continue
        ip link delete "$link" 2>/dev/null || true
        log "deleted bridge $link"
    done < <(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)
    cleanup_iptables iptables
    cleanup_iptables ip6tables
    restore_host_settings
    log "removed docker iptables chains (if any)"
}

cmd_stop() {
    local pid
    if pid=$(saved_pid); then
        log "stopping dockerd (pid $pid) ..."
        kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        # dockerd gives running containers up to 15s to stop.
        while is_dockerd "$pid" && ((waited < 40)); do
            sleep 1
            waited=$((waited + 1))
        done
        if is_dockerd "$pid"; then
            log "dockerd still running after ${waited}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            waited=0
            while is_dockerd "$pid" && ((waited < 10)); do
                sleep 1
                waited=$((waited + 1))
            done
            is_dockerd "$pid" && die "could not stop dockerd (pid $pid)"
        fi
        log "dockerd stopped"
        rm -f "$PID_FILE"
    else
        rm -f "$PID_FILE"
        if [[ -f $EXTERNAL_MARK ]]; then
            rm -f "$EXTERNAL_MARK"
            log "the engine was not started by this script; leaving it and its network alone"
            return 0
        fi
        log "no dockerd started by this script is running"
    fi
    if engine_answers; then
        log "another Docker engine still answers; leaving docker0 and iptables alone"
        return 0
    fi
    cleanup_network
}

cmd_status() {
    local pid
    if pid=$(saved_pid); then
        log "dockerd started by this script: pid $pid (pid file $PID_FILE, log $LOG_FILE)"
    elif [[ -f $EXTERNAL_MARK ]]; then
        log "engine was already running when start was called; not managed by this script"
    fi
    if engine_answers; then
        log "engine answers"
    else
        log "no engine answers"
        return 1
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
