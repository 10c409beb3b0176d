#!/bin/bash
# Runs every command of the README's "Running" block in a fresh clone of this repository, with no
# network (a new network namespace: unshare -rn) and no KRUM_MPI_DATA, with the krum-mpi of the
# active environment. Prints one line per command with its exit status; exits 1 if any failed.
#   bash scripts/check_readme_offline.sh [CLONE_DIR]
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
clone=${1:-$(mktemp -d)/krum-mpi}
if [ -z "${CHECK_README_INSIDE:-}" ]; then
    git clone -q "$repo" "$clone" || exit 1
    exec env CHECK_README_INSIDE=1 unshare -rn bash "$0" "$clone"
fi
ip link set lo up 2>/dev/null          # mpiexec talks to its ranks over loopback
unset KRUM_MPI_DATA
export XDG_CACHE_HOME="$clone/.cache-empty"
cd "$clone" || exit 1
if python -c "import urllib.request; urllib.request.urlopen('https://pypi.org', timeout=5)" 2>/dev/null; then
    echo "the network is reachable: this check needs it cut"; exit 1
fi
failed=0
python - <<'PY' > .running-commands
text = open("README.md").read()
block = text.split("## Running", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
for line in block.strip().splitlines():
    print(line.split("  #")[0].strip())
PY
while read -r cmd; do
    start=$(date +%s)
    eval "$cmd" < /dev/null > .last-output 2>&1
    rc=$?
    echo "exit $rc  $(( $(date +%s) - start )) s  $cmd"
    if [ $rc -ne 0 ]; then failed=1; tail -5 .last-output; fi
done < .running-commands
exit $failed
