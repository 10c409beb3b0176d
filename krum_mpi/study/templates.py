"""Shell templates of the SLURM job scripts, and ``fill``, which fills them in one pass.

A placeholder is ``@{NAME}`` (capitals); everything else, ``$`` and ``@`` included, is bash and
SLURM text and is left alone. ``fill`` substitutes every placeholder at once (``string.Template``),
so a value is never searched for placeholders itself: a user's config text inside a script stays
as written. A placeholder without a value, or a malformed one, is an error.
"""
import string


class ScriptTemplate(string.Template):
    """``string.Template`` with ``@{NAME}`` as its only form (no bare ``@NAME``, no escape): bash's
    ``$`` and SLURM's ``%`` and ``@`` (``--signal=B:USR1@120``) pass through untouched."""

    flags = 0   # capitals only
    pattern = r"""
        @\{(?P<braced>[A-Z][A-Z0-9_]*)\}     # a placeholder
      | (?P<escaped>(?!))                  # no escape form
      | (?P<named>(?!))                    # no bare form
      | (?P<invalid>@\{[^}\n]*\})            # @{...} that is not a placeholder name
    """


def fill(template: str, values: dict) -> str:
    """The template with every placeholder replaced by ``str(values[NAME])``, in one pass; KeyError
    names a placeholder without a value, ValueError a malformed one."""
    return ScriptTemplate(template).substitute({k: str(v) for k, v in values.items()})


ARRAY = r"""#!/bin/bash
# krum-mpi study @{STUDY_NAME}: @{N_RUNS} runs of @{RANKS} MPI ranks, in @{N_TASKS} array tasks.
# Rendered by `krum-mpi study` from @{SPEC} (site profile @{PROFILE}): change those and render again.
#SBATCH --job-name=@{JOB_NAME}
#SBATCH --array=0-@{LAST_TASK}@{THROTTLE}
#SBATCH --ntasks=@{RANKS}
@{SBATCH_LINES}#SBATCH --time=@{TIME}
#SBATCH --output=@{LOG_DIR}/%x-%A_%a.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
set -uo pipefail

# Time limit or preemption: SLURM sends USR1 to this script 120 s before the end (TERM on
# preemption). Either way the launcher gets USR1 (srun ends the step on TERM but passes USR1 on to
# every rank); the ranks stop at the same step, rank 0 checkpoints and the run exits with status 3;
# this task then requeues itself and the next start resumes (--resume).
RUN_PID=""
forward_stop() { [ -n "$RUN_PID" ] && kill -USR1 "$RUN_PID" 2>/dev/null; }
trap forward_stop USR1 TERM

# the study folder (results RUNS/ID.h5, logs RUNS/ID.log; krum_mpi.study.folder), and a Python
# with krum-mpi installed
STUDY=@{STUDY}
RUNS="$STUDY/@{RUNS_DIR}"
PYTHON=@{PYTHON}
@{SETUP}
BASE="$STUDY/@{BASE_NAME}"

# The study's base run config; each run below is this plus its --set overrides.
write_base() {
    mkdir -p "$RUNS"
    [ -f "$BASE" ] && return 0
    local tmp; tmp=$(mktemp "$BASE.XXXXXX")
    cat > "$tmp" <<'KRUM_MPI_BASE'
@{BASE_TEXT}KRUM_MPI_BASE
    mv -f "$tmp" "$BASE"
}

# One MPI world of SLURM_NTASKS ranks: srun with PMI-2 first, else mpiexec inside the allocation.
# Checked by a probe, because a launcher that does not speak the MPI library's PMI (srun --mpi=none,
# for one) silently starts SLURM_NTASKS singletons of size 1 instead of one world.
MPIEXEC=$(dirname "$(command -v "$PYTHON")")/mpiexec   # the mpich wheel installs it beside python
[ -x "$MPIEXEC" ] || MPIEXEC=@{MPIEXEC}
# A launcher can also pass the probe and then leave a run's ranks blocked in MPI_Init (seen with
# srun's PMI-2 on two nodes): each run is given START_S seconds to bring its world up (rank 0 then
# creates RUNS/ID@{STARTED}), else it is stopped and started again with the next launcher that passes
# the probe; the probe itself is bounded the same way. 0: no limit.
START_S=@{START_S}
LIMIT=""
[ "$START_S" -gt 0 ] && command -v timeout >/dev/null && LIMIT="timeout --kill-after=10 $START_S"
LAUNCH=""
SKIP=""        # launchers that left a run's world down, one per line
pick_launcher() {
    local launcher probe
    LAUNCH=""
    for launcher in "@{SRUN}" "$MPIEXEC -n $SLURM_NTASKS"; do
        if printf '%s\n' "$SKIP" | grep -qxF -- "$launcher"; then continue; fi
        # rank 0 of each world prints its size and the nodes of its ranks: one line "SIZE NODE..."
        probe=$($LIMIT $launcher "$PYTHON" -c 'import os, socket; from mpi4py import MPI
world = MPI.COMM_WORLD
nodes = world.gather(os.environ.get("SLURMD_NODENAME") or socket.gethostname())
if world.rank == 0: print(world.size, *sorted(set(nodes)))')
        if [ "$(echo "$probe" | wc -l)" = 1 ] && [ "${probe%% *}" = "$SLURM_NTASKS" ]; then
            LAUNCH=$launcher
            echo "launcher: $launcher gives one MPI world of $SLURM_NTASKS ranks on nodes: ${probe#* }"
            return 0
        fi
        echo "launcher: $launcher does not give one MPI world of $SLURM_NTASKS ranks (got: $(echo $probe))"
    done
    return 1
}

# Each rank starts with the stop signals blocked until krum-mpi has installed its handlers (env
# --block-signal, GNU coreutils 8.31 or later): a signal the launcher passes on while a rank's Python
# is still starting then stops the run with a checkpoint (status 3) instead of killing the rank
# (status 15 or 10, nothing written). Probed through the launcher, so on the nodes of the ranks.
BLOCK_STOPS=""
pick_block_stops() {
    local prefix="@{BLOCK_STOPS}"
    if [ -n "$LAUNCH" ] && $LAUNCH $prefix true >/dev/null 2>&1; then
        BLOCK_STOPS=$prefix
        echo "ranks start with the stop signals blocked: $prefix"
    elif [ -n "$LAUNCH" ]; then
        echo "ranks start with the stop signals unblocked (no env --block-signal on the nodes): a stop while a rank starts kills it, nothing written"
    fi
}

# wait_started FILE: 0 once the run in the background (RUN_PID) has brought its MPI world up (rank
# 0 created FILE) or has ended; 1 when START_S seconds pass without either.
wait_started() {
    local end=$((SECONDS + START_S))
    while [ "$START_S" -gt 0 ] && [ ! -e "$1" ] && kill -0 "$RUN_PID" 2>/dev/null; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 1
    done
    return 0
}

# stop_run: end the run in the background whose world never came up (its ranks may have the stop
# signals blocked: the launcher's SIGTERM is followed by a SIGKILL), and wait for it.
stop_run() {
    local pid=$RUN_PID
    RUN_PID=""
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# run_one ID [--set KEY=VALUE ...]: one training run, skipped when its results are complete.
FAILED=0
run_one() {
    local id=$1; shift
    local out="$RUNS/$id@{RESULT}" log="$RUNS/$id@{LOG}" started="$RUNS/$id@{STARTED}" rc
    if [ -f "$out" ] && "$PYTHON" -m krum_mpi.study.folder --complete "$out"; then
        echo "run $id: results complete, skipped"
        return 0
    fi
    rm -f "$RUNS/$id@{EXIT}"
    echo "== run $id: job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on ${SLURM_JOB_NODELIST}, $(date -Is)" >> "$log"
    if [ -z "$LAUNCH" ]; then
        echo "== no MPI launcher gives $SLURM_NTASKS ranks: see @{LOG_DIR}/${SLURM_JOB_NAME}-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out" >> "$log"
        rc=3
    else
        while :; do
            rm -f "$started"
            echo "== $LAUNCH $BLOCK_STOPS $PYTHON -m krum_mpi run $BASE $* --out $out --resume" >> "$log"
            @{STARTED_ENV}=$started $LAUNCH $BLOCK_STOPS "$PYTHON" -m krum_mpi run "$BASE" "$@" \
                --out "$out" --resume >> "$log" 2>&1 &
            RUN_PID=$!
            wait_started "$started" && break
            echo "== the run's MPI world was not up after $START_S s under $LAUNCH: stopping it, $(date -Is)" >> "$log"
            stop_run
            echo "launcher: $LAUNCH left run $id's MPI world down for $START_S s: trying the next"
            SKIP+="$LAUNCH"$'\n'
            pick_launcher && pick_block_stops && continue
            echo "== no other MPI launcher gives $SLURM_NTASKS ranks" >> "$log"
            rc=124
            break
        done
        while [ -n "$RUN_PID" ]; do  # a trapped signal ends `wait` early: wait again for the run
            wait "$RUN_PID"; rc=$?
            kill -0 "$RUN_PID" 2>/dev/null || RUN_PID=""
        done
        rm -f "$started"
    fi
    if [ "$rc" = 3 ]; then           # interrupted with a checkpoint: requeue this array task
        echo "== interrupted with a checkpoint, requeueing, $(date -Is)" >> "$log"
        scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        exit 3
    fi
    echo "== exit $rc, $(date -Is)" >> "$log"
    echo "$rc" > "$RUNS/$id@{EXIT}"
    echo "run $id: exit $rc"
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
}

write_base
pick_launcher
pick_block_stops
case $SLURM_ARRAY_TASK_ID in
@{TASKS}*)  echo "array task $SLURM_ARRAY_TASK_ID has no runs"; exit 1 ;;
esac
[ "$FAILED" = 0 ]
"""

# The head of a one-task job (the analysis job, the benchmark job): its #SBATCH lines and setup.
ONE_TASK = r"""#SBATCH --job-name=@{JOB_NAME}
#SBATCH --ntasks=1
@{SBATCH_LINES}#SBATCH --time=@{TIME}
#SBATCH --output=@{LOG_DIR}/%x-%j.out
set -uo pipefail

STUDY=@{STUDY}
PYTHON=@{PYTHON}
@{SETUP}
"""

REPORT = r"""#!/bin/bash
# krum-mpi study @{STUDY_NAME}: the analysis job, started once every array job has ended
# (submitted with --dependency=afterany, so failed runs do not block it).
""" + ONE_TASK + r"""echo "report: started $(date -Is)"
"$PYTHON" -m krum_mpi study status "$STUDY"
"$PYTHON" -m krum_mpi report "$STUDY"
"""

SUBMIT = r"""#!/bin/bash
# Submit study @{STUDY_NAME}: its array job(s)@{AND_REPORT}.
# Run from the folder the study path is relative to: bash @{HERE}/submit.sh
set -euo pipefail
here=$(dirname "$0")
mkdir -p @{LOG_DIR}
ids=()
trap '[ ${#ids[@]} = 0 ] || scancel "${ids[@]}"; echo "submit failed: cancelled ${ids[*]}" >&2' ERR
for script in @{ARRAYS}; do
    id=$(sbatch --parsable "$here/$script")
    id=${id%%;*}
    ids+=("$id")
    echo "array $id $script"
done
@{REPORT_BLOCK}"""

SUBMIT_REPORT = r"""# afterany: the analysis runs once every array task has ended, whether its runs failed or not
id=$(sbatch --parsable --dependency=afterany:$(IFS=:; echo "${ids[*]}") --kill-on-invalid-dep=yes \
     "$here/report.sbatch")
echo "report ${id%%;*} report.sbatch"
"""

BENCH = r"""#!/bin/bash
# krum-mpi @{STUDY_NAME}: one benchmark job, `krum-mpi bench @{ARGS}`, run in the study folder.
# Rendered by `krum-mpi study` from @{SPEC} (site profile @{PROFILE}): change those and render again.
#SBATCH --nodes=1
""" + ONE_TASK + r"""mkdir -p "$STUDY" && cd "$STUDY" || exit 1
echo "bench: $(date -Is) on $(hostname), job $SLURM_JOB_ID"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$PYTHON" -m krum_mpi bench @{ARGS}
"""

SUBMIT_BENCH = r"""#!/bin/bash
# Submit @{STUDY_NAME}: one benchmark job. Run from the folder the study path is relative to:
#   bash @{HERE}/submit.sh
set -euo pipefail
mkdir -p @{LOG_DIR}
id=$(sbatch --parsable "$(dirname "$0")/bench.sbatch")
echo "bench ${id%%;*} bench.sbatch"
"""
