#!/usr/bin/env bash
# Stop the test cluster started by start.sh DIR: cancel its jobs, shut down slurmctld and the
# slurmds, stop munged, remove the munge folder. Safe to run twice or after a failed start.
#   hpc/slurm-test/stop.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
[ -d "$DIR" ] || exit 0
export SLURM_CONF=$DIR/slurm.conf

# Wait up to $2 seconds for the process in pid file $1 to exit; kill it if it does not.
stop_pid() {
    local file=$1 wait=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null) || return 0
    [ -n "$pid" ] || return 0
    for _ in $(seq $(( wait * 10 ))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null; sleep 0.5
    kill -KILL "$pid" 2>/dev/null
    return 0
}

if [ -f "$SLURM_CONF" ]; then
    timeout 10 scancel --full --quiet --user "$(id -un)" 2>/dev/null
    timeout 10 scontrol shutdown >/dev/null 2>&1
    for f in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do stop_pid "$f" 5; done
fi
if [ -f "$DIR/munge.dir" ]; then
    MUNGE=$(cat "$DIR/munge.dir")
    case $MUNGE in
        /tmp/krum-munge.*)
            [ -f "$MUNGE/munged.pid" ] && kill -TERM "$(cat "$MUNGE/munged.pid")" 2>/dev/null
            stop_pid "$MUNGE/munged.pid" 3
            rm -rf "$MUNGE" ;;
    esac
    rm -f "$DIR/munge.dir"
fi
rm -f "$DIR/env.sh" "$DIR/env.sh.tmp"
echo "SLURM test cluster in $DIR stopped"
