"""The audit trail of one rank (when KRUM_MPI_AUDIT_DIR is set): which world ranks' data reached it.

Comm records, per collective, the ranks whose data it received (``Comm.audit``); at the end of a
run each rank writes ``rank<r>.json`` there, so a test can check that no data crossed where the
placement says it must not (e.g. between model groups).
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_audit(comm) -> None:
    if comm.audit is None:
        return
    folder = Path(os.environ["KRUM_MPI_AUDIT_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    unique = {json.dumps(a, sort_keys=True) for a in comm.audit}
    received = [json.loads(u) for u in sorted(unique)]
    record = {"rank": comm.rank, "workers": list(comm.worker_range()), "received": received}
    (folder / f"rank{comm.rank}.json").write_text(json.dumps(record))
