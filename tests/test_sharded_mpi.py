"""The sharded placement under real ``mpiexec`` with 1 to 4 ranks and uneven coordinate blocks:
the same selections as the gathered rules and the same aggregate to float32 rounding."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mpiexec_path

pytestmark = pytest.mark.mpi
CHECK = Path(__file__).parent / "sharded_mpi_check.py"


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_sharded_equals_gathered_across_ranks(ranks):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    done = subprocess.run([mpiexec_path(), "-n", str(ranks), sys.executable, str(CHECK)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ranks"] == ranks
    assert report["failures"] == []
