# Shared by the .ci scripts (source it; set `who` first, the prefix of every message):
#   say / die            a line on stdout / one sentence on stderr and exit 1
#   need_tools WHY CMD:PACKAGE ...
#                        install the Debian packages of the commands that are missing (as root with
#                        apt-get), or stop with one sentence naming the command that installs them
#   apt_install WHY PACKAGE ...
#                        the same for packages; "no network to the mirrors" and "disk full" get their
#                        own sentence
#   need_space DIR MB WHAT [FIX]
#                        stop with one sentence when DIR's file system has less than MB free
#   with_progress LABEL LOG COMMAND...
#                        run a long, quiet command with its output in LOG, printing every
#                        $PROGRESS_EVERY_S seconds (default 15) how long it has run and its last line
# Environment: APT_LOCK_TIMEOUT_S (default 300: wait for another apt run rather than fail).
# shellcheck shell=bash

who=${who:-benchlib}

say() { echo "$who: $*"; }
die() { echo "$who: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# Free megabytes on the file system holding $1 (its nearest existing parent).
free_mb() {
    local dir=$1
    while [ ! -e "$dir" ] && [ "$dir" != / ]; do dir=$(dirname "$dir"); done
    df -Pm "$dir" 2>/dev/null | awk 'NR == 2 {print $4}'
}

need_space() {  # need_space DIR MB WHAT [FIX]
    local dir=$1 need=$2 what=$3 fix=${4:-free space there or point TMPDIR at a larger disk} have
    have=$(free_mb "$dir")
    [ -z "$have" ] && return 0
    if [ "$have" -lt "$need" ]; then
        die "only $have MB are free on the disk holding $dir and $what needs about $need MB: $fix, then retry."
    fi
}

with_progress() {
    local label=$1 log=$2; shift 2
    local every=${PROGRESS_EVERY_S:-15} t0=$SECONDS next pid rc=0 last
    mkdir -p "$(dirname "$log")"
    "$@" >"$log" 2>&1 </dev/null &
    pid=$!
    # A background job ignores SIGINT in a script: pass Ctrl-C and SIGTERM on to it.
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 130' INT
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 143' TERM
    next=$((t0 + every))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ "$SECONDS" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
            last=$(tail -c 2000 "$log" 2>/dev/null | tr '\r' '\n' | awk 'NF {line = $0} END {print line}' | cut -c 1-110)
            say "$label: $((SECONDS - t0)) s${last:+ ... $last}"
            next=$((SECONDS + every))
        fi
    done
    wait "$pid" || rc=$?
    trap - INT TERM
    return "$rc"
}

# The line of LOG that says what went wrong, for a one-sentence error: the first line matching
# PATTERN when given, else the last line that looks like an error, else the last line.
error_line() {
    local log=$1 pattern=${2:-} line=""
    [ -n "$pattern" ] && line=$(grep -E -m 1 "$pattern" "$log" 2>/dev/null)
    [ -n "$line" ] || line=$(grep -E '^(E:|ERROR)|[Ee]rror|[Ff]ailed|No space left' "$log" 2>/dev/null | tail -n 1)
    [ -n "$line" ] || line=$(awk 'NF {line = $0} END {print line}' "$log" 2>/dev/null)
    line=$(printf '%s' "$line" | tr -s ' \t' ' ' | sed 's/^ //')
    printf '%s' "${line:0:200}"
}

NETWORK_ERRORS='Failed to fetch|Temporary failure resolving|Could not resolve|Unable to connect|Connection (timed out|refused)|Network is unreachable'

apt_install() {
    local why=$1; shift
    local packages="$*" lock
    if ! command -v apt-get >/dev/null 2>&1; then
        die "$why needs $packages, which are not installed, and this is not a Debian/Ubuntu system: install them with your package manager and retry."
    fi
    if ! is_root; then
        die "$why needs $packages, which are not installed, and installing them needs root: run 'sudo apt-get install -y $packages' (or run this as root) and retry."
    fi
    need_space /var/cache/apt/archives "${APT_NEED_MB:-300}" "apt-get install $packages" "free space there ('apt-get clean', 'docker system prune')"
    _apt_log=$(mktemp "${TMPDIR:-/tmp}/benchlib-apt.XXXXXX")
    lock=(-o "DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT_S:-300}")
    export DEBIAN_FRONTEND=noninteractive
    say "installing $packages with apt-get (for $why) ..."
    # --error-on=any: a mirror that cannot be reached is an error, not a warning that leaves old lists.
    if ! with_progress "apt-get update" "$_apt_log" apt-get "${lock[@]}" -q update --error-on=any; then
        _apt_disk_full && _apt_fail "apt-get update ran out of disk space ($(error_line "$_apt_log")): free space on /var and retry."
        _apt_fail "apt-get update failed ($(error_line "$_apt_log" "$NETWORK_ERRORS")): this machine cannot reach its Debian/Ubuntu mirrors; check the network or proxy (apt's Acquire::http::Proxy, /etc/apt/sources.list) and retry, or install $packages by hand."
    fi
    # shellcheck disable=SC2086  # one word per package
    if ! with_progress "apt-get install $packages" "$_apt_log" \
            apt-get "${lock[@]}" -y -q --no-install-recommends install $packages; then
        _apt_disk_full && _apt_fail "apt-get install $packages ran out of disk space ($(error_line "$_apt_log")): free space on / and /var (e.g. 'apt-get clean', 'docker system prune') and retry."
        grep -qE "$NETWORK_ERRORS" "$_apt_log" \
            && _apt_fail "apt-get install $packages could not download from the mirrors ($(error_line "$_apt_log" "$NETWORK_ERRORS")): check the network or proxy and retry."
        _apt_fail "apt-get install $packages failed ($(error_line "$_apt_log")): fix what apt says and retry."
    fi
    rm -f "$_apt_log"
}
_apt_disk_full() { grep -qiE 'no space left on device|not enough free space|disk quota exceeded' "$_apt_log" 2>/dev/null; }
_apt_fail() { rm -f "$_apt_log"; die "$@"; }

need_tools() {
    local why=$1 pair packages=()
    shift
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || packages+=("${pair#*:}")
    done
    [ "${#packages[@]}" -eq 0 ] || apt_install "$why" "${packages[@]}"
}
