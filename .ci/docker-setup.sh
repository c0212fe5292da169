#!/usr/bin/env bash
# Make a Docker engine available: install it when missing, start dockerd when it is not answering.
#
# Idempotent: on a machine where `docker info` already works this does nothing and exits 0.
# Made for CI (root, CI=true, fresh Debian 12 without systemd): it installs docker.io and runc via
# apt when the daemon binary is missing, starts dockerd in the background (log: /var/log/dockerd.log,
# or $DOCKERD_LOG) and waits up to $DOCKER_WAIT_S seconds (default 60) for it to answer.
# Exits non-zero with one sentence on stderr when it cannot.
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd.log}
wait_s=${DOCKER_WAIT_S:-60}

die() { echo "docker-setup: $*" >&2; exit 1; }
say() { echo "docker-setup: $*"; }

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    say "engine already running ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))."
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "dockerd is not installed and installing it needs root: run this script as root or install docker.io yourself."
    command -v apt-get >/dev/null 2>&1 || die "dockerd is not installed and this is not an apt-based system: install Docker Engine by hand."
    say "installing docker.io and runc with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run (e.g. a provisioning step) may hold the lock: wait for it rather than fail.
    lock=(-o DPkg::Lock::Timeout=300)
    apt-get "${lock[@]}" -q update >/dev/null || die "apt-get update failed: check the machine's network access to the Debian mirrors."
    apt-get "${lock[@]}" -y -q --no-install-recommends install docker.io runc >/dev/null || die "apt-get install docker.io runc failed: see the apt output above and retry."
fi

# The daemon binary exists but the engine does not answer: start it unless one is already starting.
pidfile=/var/run/docker.pid
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "dockerd (pid $(cat "$pidfile")) is running but not answering yet; waiting."
else
    [ "$(id -u)" = 0 ] || die "the Docker engine is not running and starting dockerd needs root: start it (e.g. 'sudo dockerd &' or 'systemctl start docker') and retry."
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
        die "dockerd exited during start-up: the cause is in the last lines of $log shown above."
    fi
    if engine_up; then
        say "engine is up after ${i}s ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))."
        exit 0
    fi
    sleep 1
done

tail -n 20 "$log" >&2 2>/dev/null || true
die "dockerd did not answer 'docker info' within ${wait_s}s: the cause is in $log (its last lines are above)."
