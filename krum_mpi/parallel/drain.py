"""A rank's last words before an abort: wait until the process manager has read them.

mpiexec's and srun's proxies read each rank's stdout and stderr from pipes and forward them. On
MPI_Abort they kill every rank, and a line still unread in a pipe is lost with it.
"""
from __future__ import annotations

import array
import fcntl
import os
import stat
import termios
import time


OUTPUT_DRAIN_S = 2.0    # the longest an abort waits for its last lines to be read
FORWARD_GRACE_S = 0.2   # then the process manager's time to pass on what it read


def wait_until_output_is_read(limit_s: float = OUTPUT_DRAIN_S, fds: tuple[int, ...] = (1, 2)) -> bool:
    """Waits until nothing is left unread in the pipes behind ``fds`` (what mpiexec's or srun's
    proxy reads and forwards), ``limit_s`` at most, then gives the reader FORWARD_GRACE_S to pass it
    on. True if every pipe was drained; output that is not a pipe (a file, a terminal) has nothing
    to wait for."""
    pipes = []
    for fd in fds:
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                pipes.append(fd)
        except OSError:
            pass
    if not pipes:
        return True
    count = array.array("i", [0])
    deadline = time.monotonic() + limit_s
    while True:
        unread = 0
        for fd in pipes:
            try:
                fcntl.ioctl(fd, termios.FIONREAD, count)
                unread += int(count[0])
            except OSError:
                pass
        if unread == 0 or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    time.sleep(FORWARD_GRACE_S)
    return unread == 0
