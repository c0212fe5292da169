#!/usr/bin/env bash
# Prove that the two commands work on a pristine Debian 12 machine: a privileged container started
# from a debootstrapped bookworm minbase with nothing added but git and make, where the repository is
# cloned and `CI=true make test` and `make run` are run as a newcomer would, each timed.
#
#   sudo .ci/fresh-machine.sh [STEP...]     STEP: test (CI=true make test) | run (make run)
#                                           default: test run; `run run` times a first and a cached run
#
# What is tested is what is committed: the clone comes from a read-only bind of this checkout
# (`git clone /src`), so commit first. The fresh machine has its own dockerd (privileged container,
# /var/lib/docker bound from a folder under $TMPDIR so overlay2 works); this machine's engine and
# its images are left alone, apart from the cached minbase image $FRESH_IMAGE.
#
# Facts of THIS machine handed to the fresh one, because they belong to the machine and not to the
# repository (everything else the steps need, `make` has to install by itself):
#   * the CA bundle ($CA_BUNDLE, default $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt): the
#     network here re-signs HTTPS, so pip and git inside need it. Bound read-only at
#     /etc/benchlib-host-ca.crt and named by PIP_CERT, SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
#     CURL_CA_BUNDLE and GIT_SSL_CAINFO.
#   * the local CPU torch wheel: every folder of $PIP_FIND_LINKS (here /opt/wheels, holding
#     torch-2.13.0+cpu-cp311-...whl, as CI machines have it) bound read-only at the same path, with
#     PIP_FIND_LINKS set to it. PyPI's default torch is a CUDA build of several GB.
#   * where `--privileged` is refused (a sandbox whose bounding set lacks CAP_SYS_RESOURCE: runc says
#     "unable to apply caps"), the fresh machine gets what a privileged container has but that one
#     capability: every other capability, all devices, no seccomp/AppArmor/masked paths, its own
#     cgroup namespace, and /sys and the cgroup hierarchies remounted read-write for its dockerd.
# Environment: FRESH_IMAGE (benchlib-fresh:bookworm-minbase), FORCE=1 (rebuild it), DEBIAN_MIRROR,
# KEEP=1 (leave the container and its state for inspection), FRESH_OUT (where the run's outputs and
# report are copied; default $TMPDIR/benchlib-fresh-<stamp>).
# Ends with a table: each step's wall time and exit code, the commit and the machine.
set -euo pipefail
who=fresh-machine
checkout=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$checkout/.ci/lib.sh"

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(test run)
for step in "${steps[@]}"; do
    case "$step" in test|run) ;; *) die "unknown step '$step': use test and/or run.";; esac
done
image=${FRESH_IMAGE:-benchlib-fresh:bookworm-minbase}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
stamp=$(date -u +%Y%m%d-%H%M%S)
out=${FRESH_OUT:-${TMPDIR:-/var/tmp}/benchlib-fresh-$stamp}
name=benchlib-fresh-$stamp

is_root || die "this script needs root (debootstrap, a privileged container): run it with sudo."
bash "$checkout/.ci/docker-setup.sh"
commit=$(git -C "$checkout" rev-parse HEAD)
if [ -n "$(git -C "$checkout" status --porcelain --untracked-files=no)" ]; then
    say "note: the checkout has uncommitted changes; only commit $commit is tested."
fi

# --- the pristine image: Debian's minbase plus git and make, cached by tag ------------------------
state=$(mktemp -d "${TMPDIR:-/var/tmp}/benchlib-fresh.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        say "KEEP=1: container $name and its state $state are left in place."
        return
    fi
    docker rm -f "$name" >/dev/null 2>&1 || true
    awk -v d="$state" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$state"
}
trap cleanup EXIT

if [ "${FORCE:-0}" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
    need_tools "the pristine image" debootstrap:debootstrap
    need_space "$state" 1000 "debootstrap of the pristine image"
    say "debootstrap bookworm (minbase + git, make) for $image ..."
    with_progress debootstrap "$state/debootstrap.log" \
        debootstrap --variant=minbase --include=git,make bookworm "$state/rootfs" "$mirror" \
        || { tail -n 20 "$state/debootstrap.log" >&2; die "debootstrap failed ($(error_line "$state/debootstrap.log")): see above."; }
    # As Debian's own container images: no package lists (the first apt-get must update), no cache.
    rm -rf "$state"/rootfs/var/lib/apt/lists/* "$state"/rootfs/var/cache/apt/archives/*.deb
    with_progress "docker import" "$state/import.log" bash -o pipefail -c \
        'tar --numeric-owner -C "$1" -c . | docker import --change "ENV LANG=C.UTF-8" - "$2"' import "$state/rootfs" "$image" \
        || die "docker import failed ($(error_line "$state/import.log"))."
    rm -rf --one-file-system "$state/rootfs"
fi

# --- the fresh machine ----------------------------------------------------------------------------
mounts=(-v "$checkout:/src:ro" -v "$state/docker:/var/lib/docker")
common=$(git -C "$checkout" rev-parse --path-format=absolute --git-common-dir)
case "$common" in "$checkout"/*) ;; *) mounts+=(-v "$common:$common:ro");; esac  # a worktree's git dir
env_args=()
if [ -r "$ca_bundle" ]; then
    mounts+=(-v "$(realpath "$ca_bundle"):/etc/benchlib-host-ca.crt:ro")
    for var in PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO; do
        env_args+=(-e "$var=/etc/benchlib-host-ca.crt")
    done
fi
links=()
for dir in ${PIP_FIND_LINKS:-}; do
    [ -d "$dir" ] && mounts+=(-v "$dir:$dir:ro") && links+=("$dir")
done
[ "${#links[@]}" -eq 0 ] || env_args+=(-e "PIP_FIND_LINKS=${links[*]}")
mkdir -p "$state/docker"
# --shm-size: a machine's /dev/shm is a tmpfs of half its memory, not Docker's 64 MiB default (the tests
# compare the host's /dev/shm with the isolated arm's 64 MiB, and would see no difference)
shm_mib=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 2048 ))
start=(docker run -d --name "$name" --hostname fresh-bookworm --shm-size "${shm_mib}m" "${mounts[@]}" "${env_args[@]}")
if ! "${start[@]}" --privileged "$image" sleep infinity >/dev/null 2>"$state/run.err"; then
    # A sandbox without CAP_SYS_RESOURCE in its bounding set cannot start a privileged container
    # ("unable to apply caps"): give the fresh machine everything else a privileged one has.
    grep -q "apply caps" "$state/run.err" || { cat "$state/run.err" >&2; die "could not start the fresh machine (above)."; }
    docker rm -f "$name" >/dev/null 2>&1 || true
    say "--privileged is refused here ($(error_line "$state/run.err")); emulating it without CAP_SYS_RESOURCE."
    "${start[@]}" --cap-add ALL --cap-drop SYS_RESOURCE --device-cgroup-rule 'a *:* rwm' \
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
        --cgroupns private "$image" sleep infinity >/dev/null
    docker exec "$name" sh -ec 'mount -o remount,rw /sys
        for dir in /sys/fs/cgroup/*/; do mount -o remount,bind,rw "$dir"; done
        [ -e /sys/fs/cgroup/cgroup.controllers ] && mount -o remount,rw /sys/fs/cgroup || true'
fi
say "started $name from $image ($(docker exec "$name" sh -c '. /etc/os-release; echo "$PRETTY_NAME"'); installed: $(docker exec "$name" sh -c 'dpkg-query -W -f "\${Package} " | wc -w') packages)."
docker exec "$name" git clone --quiet --no-hardlinks /src /root/repo
tested=$(docker exec "$name" git -C /root/repo rev-parse HEAD)
say "cloned $tested into /root/repo."

results=()
run_step() {
    local step=$1 number=$2 t0 rc=0 command
    case "$step" in
        test) command="CI=true make test";;
        run) command="make run";;
    esac
    say "=== step $number: $command ($(date -u +%H:%M:%S) UTC) ==="
    t0=$SECONDS
    docker exec -w /root/repo "$name" bash -c "$command" || rc=$?
    results+=("$(printf '%-20s %5d s  (%d min %02d s)  exit %d' "$command" $((SECONDS - t0)) \
        $(((SECONDS - t0) / 60)) $(((SECONDS - t0) % 60)) "$rc")")
    say "=== step $number: $command took $((SECONDS - t0)) s, exit $rc ==="
}
number=0
for step in "${steps[@]}"; do
    number=$((number + 1))
    run_step "$step" "$number"
done

mkdir -p "$out"
docker cp "$name:/root/repo/outputs" "$out/" >/dev/null 2>&1 || true
docker cp "$name:/root/repo/docs/reports" "$out/" >/dev/null 2>&1 || true
echo
echo "== fresh machine: $image, commit $tested, $(date -u +%Y-%m-%d) =="
echo "   host: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/ {print $2}') GB, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '   %s\n' "${results[@]}"
echo "   outputs and reports copied to $out"
! printf '%s\n' "${results[@]}" | grep -qv 'exit 0$'
