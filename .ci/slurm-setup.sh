#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for the `--on slurm` tests: munge, slurmctld and slurmd
# (Debian 12's Slurm 22.05), two GPUs as gres, no systemd needed.
#
# Idempotent: when `sinfo` already shows this cluster's node idle (or mixed/allocated) it does
# nothing. As root with apt it installs slurmctld, slurmd, slurm-client and munge when missing,
# writes /etc/slurm/slurm.conf and gres.conf for this host (only when no configuration is there or
# the one there is this script's own; a site's configuration is never touched), creates the munge
# key when missing, makes /dev/nvidia0 and /dev/nvidia1 with `mknod c 195 N` when this host has no
# real /dev/nvidia0 (on a GPU host the real device files are the gres), starts munged, slurmctld and
# slurmd in the background (logs in /var/log/slurm/) and waits up to $SLURM_WAIT_S seconds (default
# 60) for the node to be idle. Exits non-zero with one sentence on stderr when it cannot.
#
# The cluster: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none (no cgroups needed),
# SelectType=select/cons_tres with CR_CPU, no accounting, one partition `debug` holding the node,
# GresTypes=gpu and Gres=gpu:N on the node line. `gres.conf` names the device files (without
# `File=` the node is marked invalid), so Slurm sets CUDA_VISIBLE_DEVICES for the jobs it runs.
set -euo pipefail

conf_dir=${SLURM_CONF_DIR:-/etc/slurm}
wait_s=${SLURM_WAIT_S:-60}
log_dir=/var/log/slurm
state_dir=/var/lib/slurm
marker="# written by benchlib .ci/slurm-setup.sh"

die() { echo "slurm-setup: $*" >&2; exit 1; }
say() { echo "slurm-setup: $*"; }

node=$(hostname -s 2>/dev/null || hostname)
[ -n "$node" ] || die "this host has no hostname: set one (hostname NAME) and retry."

node_state() { timeout 10 sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -n 1; }
ready() {
    case "$(node_state)" in
        idle|mixed|allocated|completing) return 0 ;;
        *) return 1 ;;
    esac
}
ours() { [ -f "$conf_dir/slurm.conf" ] && head -n 1 "$conf_dir/slurm.conf" | grep -qxF "$marker"; }

if command -v sinfo >/dev/null 2>&1 && ready; then
    say "node $node is $(node_state) already; nothing to do."
    exit 0
fi
if [ -f "$conf_dir/slurm.conf" ] && ! ours; then
    die "$conf_dir/slurm.conf is a site configuration, not this script's, and node $node is not idle in it: fix that cluster, or run the tests where no Slurm is configured."
fi

# --- packages -------------------------------------------------------------------------------------
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "${missing[*]} not installed and installing needs root: run this script as root, or apt-get install ${missing[*]}."
    command -v apt-get >/dev/null 2>&1 || die "${missing[*]} not installed and this is not an apt-based system: install Slurm and munge by hand."
    say "installing ${missing[*]} with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    lock=(-o DPkg::Lock::Timeout=300)
    apt-get "${lock[@]}" -q update >/dev/null || die "apt-get update failed: check this machine's access to the Debian mirrors."
    # policy-rc.d: the packages' own init scripts must not start daemons (there is no init system here).
    policy=/usr/sbin/policy-rc.d
    created_policy=
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1; fi
    apt-get "${lock[@]}" -y -q --no-install-recommends install slurmctld slurmd slurm-client munge >/dev/null \
        || { [ -n "$created_policy" ] && rm -f "$policy"; die "apt-get install slurmctld slurmd slurm-client munge failed: see the apt output above and retry."; }
    [ -n "$created_policy" ] && rm -f "$policy"
fi
[ "$(id -u)" = 0 ] || die "the cluster is not running and starting munged, slurmctld and slurmd needs root: run this script as root."

# --- GPUs as gres ---------------------------------------------------------------------------------
if [ -c /dev/nvidia0 ] && [ ! -e /run/benchlib-fake-nvidia ]; then
    gpus=$(ls /dev/nvidia[0-9]* 2>/dev/null | grep -c '^/dev/nvidia[0-9][0-9]*$')
    say "using this host's $gpus real GPU device files as gres."
else
    gpus=2
    for k in 0 1; do
        [ -e "/dev/nvidia$k" ] || mknod -m 666 "/dev/nvidia$k" c 195 "$k" || die "mknod /dev/nvidia$k failed: run as root in a container allowed to make device nodes (docker run --privileged)."
    done
    touch /run/benchlib-fake-nvidia  # these device files are ours: a later run must not take them for real GPUs
fi

# --- configuration --------------------------------------------------------------------------------
hardware=$(slurmd -C 2>/dev/null | head -n 1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
[ -n "$hardware" ] || hardware="CPUs=$(nproc)"
mkdir -p "$conf_dir" "$log_dir" "$state_dir/slurmctld" "$state_dir/slurmd"
new_conf=$(cat <<EOF
$marker
# A one-node cluster on localhost for benchlib's tests; rewritten by the script when it changes.
ClusterName=benchlib-ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
GresTypes=gpu
StateSaveLocation=$state_dir/slurmctld
SlurmdSpoolDir=$state_dir/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 ${hardware}Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
new_gres="$marker
NodeName=$node Name=gpu File=/dev/nvidia[0-$((gpus - 1))]"
changed=
if [ "$(cat "$conf_dir/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then printf '%s\n' "$new_conf" >"$conf_dir/slurm.conf"; changed=1; fi
if [ "$(cat "$conf_dir/gres.conf" 2>/dev/null)" != "$new_gres" ]; then printf '%s\n' "$new_gres" >"$conf_dir/gres.conf"; changed=1; fi

# --- daemons --------------------------------------------------------------------------------------
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ -n "$changed" ]; then  # a changed node line needs both daemons restarted, not a reconfigure
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if alive "$pidfile"; then pid=$(cat "$pidfile"); kill "$pid"; for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi
    done
fi

if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key ..."
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --force >/dev/null; else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    say "starting munged ..."
    runuser -u munge -- munged --force || die "munged did not start: the cause is in /var/log/munge/munged.log."
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || die "munged runs but a credential does not decode: check /etc/munge/munge.key and /var/log/munge/munged.log."
fi
if ! alive /run/slurmctld.pid; then
    say "starting slurmctld (log: $log_dir/slurmctld.log) ..."
    slurmctld || die "slurmctld did not start: the cause is in $log_dir/slurmctld.log."
fi
for _ in $(seq 100); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! alive /run/slurmd.pid; then
    say "starting slurmd (log: $log_dir/slurmd.log) ..."
    slurmd || die "slurmd did not start: the cause is in $log_dir/slurmd.log."
fi

for ((i = 0; i < wait_s * 2; i++)); do
    if ready; then
        say "node $node is idle with gpu:$gpus after $((i / 2)) s (partition debug)."
        exit 0
    fi
    case "$(node_state)" in
        down*|drain*|fail*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
tail -n 5 "$log_dir/slurmctld.log" "$log_dir/slurmd.log" >&2 2>/dev/null || true
die "node $node is '$(node_state)', not idle, after ${wait_s} s: the reason is in 'scontrol show node $node' and the log lines above."
