#!/usr/bin/env bash
# Make a Docker engine available: install it when missing, start dockerd when it is not answering.
#
# Idempotent: on a machine where `docker info` already works this does nothing and exits 0.
# Made for CI and fresh machines (root, Debian 12 without systemd): it installs docker.io and runc
# with apt when the daemon binary is missing, starts dockerd in the background (log:
# /var/log/dockerd.log, or $DOCKERD_LOG) and waits up to $DOCKER_WAIT_S seconds (default 60) for it
# to answer. Exits 1 with one sentence on stderr when it cannot: not installed and not root, no
# permission on the engine's socket, no network to the mirrors, a daemon that will not start.
set -euo pipefail
who=docker-setup
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

log=${DOCKERD_LOG:-/var/log/dockerd.log}
wait_s=${DOCKER_WAIT_S:-60}

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    say "engine already running ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))."
    exit 0
fi

# Installed and running, but this user may not talk to it: the engine says so, or (when it is too slow
# to answer on a loaded machine) its socket, there and not writable by this user, does.
if command -v docker >/dev/null 2>&1 && ! is_root; then
    answer=$(timeout 30 docker info 2>&1 >/dev/null || true)
    socket=/var/run/docker.sock
    case "${DOCKER_HOST:-}" in unix://*) socket=${DOCKER_HOST#unix://};; esac
    if grep -qi "permission denied" <<<"$answer" || { [ -S "$socket" ] && [ ! -w "$socket" ]; }; then
        die "user $(id -un) may not use the Docker engine (permission denied on its socket): add the user to the docker group ('sudo usermod -aG docker $(id -un)', then log in again) or run as root."
    fi
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if ! is_root && ! command -v docker >/dev/null 2>&1; then
        die "Docker is not installed and installing it needs root: run 'sudo apt-get install -y docker.io runc' (or this script as root), or leave the container arm out."
    fi
    apt_install "the container arm" docker.io runc
fi

# The daemon binary exists but the engine does not answer: start it unless one is already starting.
pidfile=/var/run/docker.pid
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "dockerd (pid $(cat "$pidfile")) is running but not answering yet; waiting."
else
    is_root || die "the Docker engine is not running and starting dockerd needs root: start it ('sudo systemctl start docker', or 'sudo dockerd &') and retry."
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        say "starting docker with systemctl ..."
        systemctl start docker || true
    fi
    if ! engine_up; then
        say "starting dockerd in the background (log: $log) ..."
        mkdir -p "$(dirname "$log")"
        # setsid + nohup: the daemon outlives this script and the CI step that ran it.
        setsid nohup dockerd >>"$log" 2>&1 </dev/null &
        started=$!
    fi
fi

for ((i = 0; i < wait_s; i++)); do
    if [ -n "${started:-}" ] && ! kill -0 "$started" 2>/dev/null && ! engine_up; then
        tail -n 20 "$log" >&2 2>/dev/null || true
        die "dockerd exited during start-up ($(error_line "$log")): the cause is in $log (last lines above)."
    fi
    if engine_up; then
        say "engine is up after ${i}s ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))."
        exit 0
    fi
    sleep 1
done

tail -n 20 "$log" >&2 2>/dev/null || true
die "dockerd did not answer 'docker info' within ${wait_s}s: the cause is in $log (its last lines are above)."
