#!/usr/bin/env bash
# The example study behind docs/example-report: real runs on spambase (the Krum paper's Figure 4
# setting: n = 20 workers, minibatch 3, MLP 57-20-20-2, 500 rounds, Gaussian Byzantine vectors with
# sigma = 200), sized for a 2-core machine (about 15 minutes, one run at a time so timings are clean).
#
#   usage: bash analysis/example_study.sh [OUT_DIR] [STEPS]     (default results/example-study 500)
#   then:  krum-mpi report OUT_DIR --out docs/example-report --figure-formats png
#
# Parts: (1) average, krum, multi-krum declared for f = 6 (30%) at 0, 1, 2, 4, 6 actual Byzantine
# workers, 3 seeds; (2) average and krum at 0 and 6 Byzantine with a wider model (100-100) and with
# 500 training samples instead of all; (3) average and krum without attack at n = 10 and 40 workers,
# and at n = 20 on 1 MPI rank instead of 2 (strong scaling). Existing files are kept (rerun resumes).
set -euo pipefail
OUT=${1:-results/example-study}
STEPS=${2:-500}
MPIEXEC=${MPIEXEC:-mpiexec}
CONFIG=configs/paper-fig4-average-f0.toml
SEEDS=(0 1 2)
mkdir -p "$OUT"

run() {  # run RANKS NAME [--set key=value ...]
  local ranks=$1 name=$2; shift 2
  local file="$OUT/$name.h5"
  if [[ -f "$file" ]]; then return; fi
  echo "run $name"
  "$MPIEXEC" -n "$ranks" python -m krum_mpi run "$CONFIG" --quiet --out "$file" \
    --set run.steps="$STEPS" --set run.name="$name" "$@"
}

attack() {  # the Byzantine workers' behaviour for a count of them
  if [[ $1 -eq 0 ]]; then echo "--set attack.name=none"; else
    echo "--set attack.name=gaussian --set attack.sigma=200.0"; fi
}

for seed in "${SEEDS[@]}"; do
  # (1) cost without attack and what robustness buys, declared f = 6 throughout
  for rule in average krum multi-krum; do
    for byz in 0 1 2 4 6; do
      run 2 "$rule-n20-b$byz-s$seed" --set run.seed="$seed" --set aggregator.name="$rule" \
        --set aggregator.f=6 --set workers.byzantine="$byz" $(attack "$byz")
    done
  done
  # (2) model size and number of samples
  for rule in average krum; do
    for byz in 0 6; do
      run 2 "$rule-n20-b$byz-h100-s$seed" --set run.seed="$seed" --set aggregator.name="$rule" \
        --set aggregator.f=6 --set workers.byzantine="$byz" $(attack "$byz") --set "model.hidden=[100, 100]"
      run 2 "$rule-n20-b$byz-t500-s$seed" --set run.seed="$seed" --set aggregator.name="$rule" \
        --set aggregator.f=6 --set workers.byzantine="$byz" $(attack "$byz") --set data.max_train=500
    done
  done
done
# (3) time as workers grow (declared f about 30% of n) and strong scaling over ranks, 2 seeds
for seed in 0 1; do
  for rule in average krum; do
    run 2 "$rule-n10-b0-s$seed" --set run.seed="$seed" --set aggregator.name="$rule" \
      --set workers.n=10 --set aggregator.f=3 --set workers.byzantine=0 --set attack.name=none
    run 2 "$rule-n40-b0-s$seed" --set run.seed="$seed" --set aggregator.name="$rule" \
      --set workers.n=40 --set aggregator.f=12 --set workers.byzantine=0 --set attack.name=none
    run 1 "$rule-n20-b0-r1-s$seed" --set run.seed="$seed" --set aggregator.name="$rule" \
      --set aggregator.f=6 --set workers.byzantine=0 --set attack.name=none
  done
done
echo "study written to $OUT"
