#!/usr/bin/env bash
# Start a real SLURM on this host, for tests: munged, slurmctld and N slurmd (N fake nodes n1..nN,
# each its own slurmd on its own port), all state under DIR. Waits until every node is idle.
#
#   hpc/slurm-test/start.sh DIR [--nodes N] [--cpus C] [--timeout S]
#   . DIR/env.sh          # exports SLURM_CONF: sbatch, squeue, sacct -c, scontrol now talk to it
#   hpc/slurm-test/stop.sh DIR
#
# Needs root (daemons run as root, munged as the munge user) and hpc/slurm-test/install.sh.
# No systemd is needed. Nodes declare more CPUs than the host has (config_overrides) on purpose:
# a job asking for more CPUs than a node declares is accepted and then pends forever.
set -euo pipefail

usage() { echo "usage: $0 DIR [--nodes N] [--cpus C] [--timeout S]" >&2; exit 2; }
[ $# -ge 1 ] || usage
DIR=$1; shift
NODES=1; CPUS=8; TIMEOUT=30
while [ $# -gt 0 ]; do
    case $1 in
        --nodes) NODES=$2; shift 2 ;;
        --cpus) CPUS=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        *) usage ;;
    esac
done
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin, which a user's PATH may lack
for cmd in munged mungekey slurmctld slurmd sinfo scontrol; do
    command -v $cmd >/dev/null || { echo "start.sh: $cmd not found: run hpc/slurm-test/install.sh" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "start.sh: the test cluster needs root (slurmd runs jobs as their user)" >&2; exit 1; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ -f "$DIR/env.sh" ]; then
    echo "start.sh: $DIR already holds a cluster: run stop.sh $DIR first" >&2; exit 1
fi
mkdir -p "$DIR"/{state,spool,run,log}

# Ports: a free block per cluster, so several test clusters (and a real one) can coexist.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 50); do
    BASE=$(( 20000 + (RANDOM % 2000) * 10 ))
    ok=1
    for p in $(seq $BASE $(( BASE + NODES ))); do port_free $p || ok=0; done
    [ $ok = 1 ] && break
done

# munge: its files must be reachable by the munge user, and DIR may sit in a private (0700) tree,
# so the socket and key live in their own world-traversable folder, recorded in DIR/munge.dir.
MUNGE=$(mktemp -d /tmp/krum-munge.XXXXXX)
echo "$MUNGE" > "$DIR/munge.dir"
chmod 711 "$MUNGE"
chown munge:munge "$MUNGE"
runuser -u munge -- mungekey -c -k "$MUNGE/munge.key"
runuser -u munge -- munged --socket="$MUNGE/munge.socket" --key-file="$MUNGE/munge.key" \
    --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
munge -S "$MUNGE/munge.socket" -n | unmunge -S "$MUNGE/munge.socket" >/dev/null

NODE_LINES=""
for i in $(seq 1 "$NODES"); do
    NODE_LINES+="NodeName=n$i NodeAddr=127.0.0.1 NodeHostname=$(hostname) Port=$(( BASE + i )) CPUs=$CPUS RealMemory=8000 State=UNKNOWN"$'\n'
done
cat > "$DIR/slurm.conf" <<CONF
# Test cluster made by hpc/slurm-test/start.sh: $NODES node(s) on one host.
ClusterName=krumtest
# Job ids that do not repeat across test clusters: MPICH names its shared-memory segments after the
# PMI key space (job and step id), and a segment left by a killed job of an earlier cluster with the
# same ids broke MPI_Init of the new job ("Message ... truncated").
FirstJobId=$(( (RANDOM << 15 | RANDOM) % 50000000 + 1000 ))
SlurmctldHost=localhost
SlurmctldPort=$BASE
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=pmi2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MinJobAge=600
KillWait=2
InactiveLimit=0
$NODE_LINES
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
echo "export SLURM_CONF=$DIR/slurm.conf" > "$DIR/env.sh.tmp"
export SLURM_CONF=$DIR/slurm.conf

slurmctld -i
for i in $(seq 1 "$NODES"); do slurmd -N "n$i"; done

# Wait until every node reports idle.
deadline=$(( SECONDS + TIMEOUT ))
while :; do
    states=$(timeout 5 sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    [ "$states" = "idle " ] && [ "$(timeout 5 sinfo -h -N -o '%N' | wc -l)" = "$NODES" ] && break
    if [ $SECONDS -ge $deadline ]; then
        echo "start.sh: nodes not idle after ${TIMEOUT}s (states: ${states:-none}); see $DIR/log" >&2
        mv "$DIR/env.sh.tmp" "$DIR/env.sh"   # so that stop.sh finds and stops what did start
        exit 1
    fi
    sleep 0.2
done
mv "$DIR/env.sh.tmp" "$DIR/env.sh"
echo "SLURM test cluster up: $NODES node(s), SLURM_CONF=$SLURM_CONF"
