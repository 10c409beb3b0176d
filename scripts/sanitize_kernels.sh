#!/usr/bin/env bash
# Run the kernel and rule tests on the compiled kernels built with AddressSanitizer and UBSan
# (out-of-bounds reads and writes, undefined behaviour in krum_mpi/native/*.c). The optimised
# libraries are put back afterwards, whatever happens. Needs gcc with libasan/libubsan.
#   bash scripts/sanitize_kernels.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
native=krum_mpi/native
suffix=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
keep=$(mktemp -d)
cp "$native"/_*"$suffix" "$keep"/
trap 'cp "$keep"/_*"$suffix" "$native"/; rm -rf "$keep"' EXIT
for src in "$native"/*.c; do
  name=$(basename "$src" .c)
  gcc -O1 -g -std=c11 -fno-math-errno -fPIC -shared -fsanitize=address,undefined -fno-omit-frame-pointer \
      -o "$native/_$name$suffix" "$src"
done
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
  python3 -m pytest -q -x -p no:cacheprovider tests/test_native_gram.py tests/test_native_order.py \
  tests/test_native_rows.py tests/test_distances.py tests/test_aggregators.py tests/test_aggregators_properties.py "$@"
