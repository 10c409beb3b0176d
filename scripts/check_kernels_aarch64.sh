#!/usr/bin/env bash
# The compiled kernels' generic variant on aarch64, emulated by qemu-user: setup.py cross-builds the
# kernels with gcc-aarch64-linux-gnu (and clang --target=aarch64-linux-gnu where clang is), and
# tests/test_native_aarch64.py runs them through scripts/kernel_driver.c under qemu-aarch64 and
# compares with the documented Gram accumulation order, across compilers and with the host's
# generic order kernel. Installs Debian's qemu-user and cross compiler when missing (as root).
#   bash scripts/check_kernels_aarch64.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -d /usr/aarch64-linux-gnu/lib ] || need+=(libc6-dev-arm64-cross)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "check_kernels_aarch64: missing ${need[*]}: install them (Debian: apt-get install ${need[*]})" >&2
    exit 1
  fi
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi
echo "check_kernels_aarch64: $(aarch64-linux-gnu-gcc --version | head -1); $(qemu-aarch64 --version | head -1)"
python -m pytest -q -p no:cacheprovider tests/test_native_aarch64.py "$@"
