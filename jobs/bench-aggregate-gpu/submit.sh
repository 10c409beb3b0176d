#!/bin/bash
# Submit bench-aggregate-gpu: one benchmark job. Run from the folder the study path is relative to:
#   bash jobs/bench-aggregate-gpu/submit.sh
set -euo pipefail
mkdir -p studies/bench-aggregate-gpu/slurm/logs
id=$(sbatch --parsable "$(dirname "$0")/bench.sbatch")
echo "bench ${id%%;*} bench.sbatch"
