#!/bin/bash
# Submit study byzfl-mnist: its array job(s), then its analysis job.
# Run from the folder the study path is relative to: bash jobs/byzfl-mnist/submit.sh
set -euo pipefail
here=$(dirname "$0")
mkdir -p studies/byzfl-mnist/slurm/logs
ids=()
trap '[ ${#ids[@]} = 0 ] || scancel "${ids[@]}"; echo "submit failed: cancelled ${ids[*]}" >&2' ERR
for script in array-r5-t60m.sbatch; do
    id=$(sbatch --parsable "$here/$script")
    id=${id%%;*}
    ids+=("$id")
    echo "array $id $script"
done
# afterany: the analysis runs once every array task has ended, whether its runs failed or not
id=$(sbatch --parsable --dependency=afterany:$(IFS=:; echo "${ids[*]}") --kill-on-invalid-dep=yes \
     "$here/report.sbatch")
echo "report ${id%%;*} report.sbatch"
