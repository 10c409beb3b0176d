"""Studies: sweeps of runs from a spec, run here with mpiexec or submitted to SLURM as job arrays.

    spec.py      the study spec (base config, sweep axes, launch settings, exclusions)
    plan.py      expand a spec into runs with stable ids, check each config, estimate the cost;
                 run configs written as TOML (tomli-w)
    cell.py      one run of a sweep, picked by its swept values (``krum-mpi run --from-study``)
    folder.py    the study folder's layout (named once): plan, results, logs, exit statuses, SLURM
                 submissions
    local.py     run a study on this machine, a few runs at a time
    slurm.py     site profiles, job scripts rendered at submit time (templates.py, one-pass
                 ``string.Template``), sbatch, squeue / sacct
    tuning.py    the tuning stage: a grid per rule without attack, the choice (tuning.json), the
                 parts that take the chosen values
    kernel.py    one BLAS kernel per study (OPENBLAS_CORETYPE pinned, mixing refused)
    bench_job.py a [bench] spec: one ``krum-mpi bench`` job
    status.py    done / running / failed / pending per run
    cli.py       ``krum-mpi study plan|run|submit|status|render``
"""
from .plan import Plan, Run, make_plan
from .spec import Spec, load_spec

__all__ = ["Spec", "load_spec", "Plan", "Run", "make_plan"]
