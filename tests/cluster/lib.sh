# Sourced by up/down/restart: process bookkeeping for the local control plane.
# Each process is known by <state>/<name>.pid; it counts as ours only while that pid
# runs a binary of that name with a command line naming the state directory, so a
# stale pid file never makes us signal someone else's process.
# shellcheck shell=bash

# Stop order: dependants first.
CLUSTER_COMPONENTS=(kube-controller-manager kube-apiserver etcd)

# Prints the pid of component $2 if it is running, else fails.
running_pid() { # state name
    local state="$1" name="$2" pid exe
    [[ -s "$state/$name.pid" ]] || return 1
    pid="$(<"$state/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    exe="${exe% (deleted)}"
    [[ "${exe##*/}" == "$name" ]] || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$state/"* ]] || return 1
    # A zombie has exited already.
    [[ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
    echo "$pid"
}

all_running() { # state
    local name
    for name in "${CLUSTER_COMPONENTS[@]}"; do
        running_pid "$1" "$name" >/dev/null || return 1
    done
}

api_ready() { # state
    local state="$1"
    [[ -s "$state/apiserver-url" ]] || return 1
    curl -fsS --max-time 5 --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" \
        --key "$state/pki/admin.key" "$(<"$state/apiserver-url")/readyz" >/dev/null 2>&1
}

# Starts a component in its own session (so a Ctrl-C aimed at the caller does not
# reach it), with its arguments saved in <name>.args for ./restart. fd 9 (the state
# lock) is closed in the child, or the component would hold the lock for its lifetime.
start_process() { # state name binary args...
    local state="$1" name="$2"
    shift 2
    printf '%s\0' "$@" >"$state/$name.args"
    rm -f "$state/$name.pid"
    setsid bash -c 'echo $$ >"$0.pid.tmp" && mv "$0.pid.tmp" "$0.pid" && exec "$@"' \
        "$state/$name" "$@" </dev/null >>"$state/$name.log" 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        # Ready once the wrapper has exec'd the binary.
        running_pid "$state" "$name" >/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Restarts a component from the arguments start_process saved.
start_saved() { # state name
    local state="$1" name="$2" args=()
    mapfile -d '' args <"$state/$name.args"
    start_process "$state" "$name" "${args[@]}"
}

# Runs the check command until it succeeds; fails early if the component exits.
wait_for() { # state name timeout-seconds command...
    local state="$1" name="$2" timeout="$3"
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! running_pid "$state" "$name" >/dev/null; then
            echo "cluster: $name exited; the end of $state/$name.log:" >&2
            tail -n 20 "$state/$name.log" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "cluster: $name not ready after $timeout s; the end of $state/$name.log:" >&2
            tail -n 20 "$state/$name.log" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Stops one component: SIGTERM, then SIGKILL after 20 s; returns once it has exited.
stop_process() { # state name [grace seconds, default 20]
    local state="$1" name="$2" grace="${3:-20}" pid i
    if pid="$(running_pid "$state" "$name")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            running_pid "$state" "$name" >/dev/null || break
            sleep 0.1
        done
        if running_pid "$state" "$name" >/dev/null; then
            echo "cluster: $name (pid $pid) ignored SIGTERM, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                running_pid "$state" "$name" >/dev/null || break
                sleep 0.1
            done
        fi
        if running_pid "$state" "$name" >/dev/null; then
            echo "cluster: $name (pid $pid) is still running" >&2
            return 1
        fi
        echo "cluster: stopped $name (pid $pid)" >&2
    fi
    rm -f "$state/$name.pid"
}

stop_all() { # state
    local name status=0
    for name in "${CLUSTER_COMPONENTS[@]}"; do
        stop_process "$1" "$name" || status=1
    done
    return "$status"
}
