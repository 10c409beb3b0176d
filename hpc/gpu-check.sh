#!/usr/bin/env bash
# GPU check of the aggregation rules, for a CUDA node with krum-mpi and CuPy already installed
# (it installs nothing): every rule's CuPy path against its NumPy path on random, adversarial and
# non-finite inputs, then Krum at n = 64, d = 2.5e7 (ResNet-50 scale) against the GPU's own read and
# GEMM floors. Stops after 5 minutes. Exit status: 0 all agree, 1 a rule disagrees, 2 no GPU/CuPy,
# 124 timed out.
#   bash hpc/gpu-check.sh [LOG]        (LOG default: gpu-check-<host>-<date>.log)
#   sbatch --gpus=1 --time=00:10:00 hpc/gpu-check.sh
set -uo pipefail
log="${1:-gpu-check-$(hostname)-$(date +%Y%m%d-%H%M%S).log}"

if ! python3 -c "import cupy; cupy.cuda.runtime.getDeviceCount()" >/dev/null 2>&1; then
  echo "gpu-check: no CUDA device visible to CuPy (or CuPy is not installed): run it on a GPU node with 'pip install -e .[gpu]' done" >&2
  exit 2
fi
if [ -n "${CUPY_TF32:-}" ] && [ "${CUPY_TF32}" != "0" ]; then
  echo "gpu-check: CUPY_TF32=${CUPY_TF32} loses the precision distances need: unset it" >&2
  exit 2
fi
{
  date
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
  python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"
} | tee "$log"
timeout 300 krum-mpi bench gpu-check --n 64 --d 2.5e7 --repeats 5 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
echo "gpu-check: exit ${status}; log in ${log}"
exit "$status"
