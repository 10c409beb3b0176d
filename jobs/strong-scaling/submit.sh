#!/bin/bash
# Submit study strong-scaling: its array job(s), then its analysis job.
# Run from the folder the study path is relative to: bash jobs/strong-scaling/submit.sh
set -euo pipefail
here=$(dirname "$0")
mkdir -p studies/strong-scaling/slurm/logs
ids=()
trap '[ ${#ids[@]} = 0 ] || scancel "${ids[@]}"; echo "submit failed: cancelled ${ids[*]}" >&2' ERR
for script in array-r1-t30m.sbatch array-r2-t30m.sbatch array-r4-t30m.sbatch array-r8-t30m.sbatch array-r16-t30m.sbatch array-r32-t30m.sbatch array-r64-t30m.sbatch; do
    id=$(sbatch --parsable "$here/$script")
    id=${id%%;*}
    ids+=("$id")
    echo "array $id $script"
done
# afterany: the analysis runs once every array task has ended, whether its runs failed or not
id=$(sbatch --parsable --dependency=afterany:$(IFS=:; echo "${ids[*]}") --kill-on-invalid-dep=yes \
     "$here/report.sbatch")
echo "report ${id%%;*} report.sbatch"
