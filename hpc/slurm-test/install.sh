#!/usr/bin/env bash
# Install Debian's SLURM (slurmctld, slurmd, clients) and munge for the single-node test cluster.
# Idempotent: does nothing when both are already installed. Needs root (or sudo) and apt.
#   hpc/slurm-test/install.sh
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    echo "slurm-wlm and munge already installed: $(slurmctld -V)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install.sh: run as root or install sudo" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "installed: $(slurmctld -V), $(munged --version 2>&1 | head -n 1)"
