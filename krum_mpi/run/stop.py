"""Stop requests (SIGTERM, SIGUSR1: SLURM time limits and preemption) for ``krum-mpi run``.

The handlers are installed first thing, before NumPy, h5py or MPI are imported: a rank that got
the signal during those imports (about half a second) used to die of it, and the MPI launcher then
ended the job with its own status (15, or 9 for the ranks it killed) instead of 3. This module
imports nothing heavy for that reason.

The handler only records the signal; the training loop checks the record once per step. Python
runs handlers in the main thread between bytecodes, so while the main thread is blocked in an MPI
call (a rank that never answers), the record stays unset. The C-level handler also writes the
signal number to a wakeup socket, which the watchdog thread reads: it sees the stop even then.
"""
from __future__ import annotations

import signal
import socket

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """The stop signal received (0: none). Callable, so it can be a signal handler itself."""

    def __init__(self):
        self.signal = 0
        self._wakeup = None     # (reader, writer) socket pair once installed

    def __call__(self, signum, frame=None):
        self.signal = signum

    def install(self) -> "StopRequest":
        """Handle SIGTERM and SIGUSR1 from now on (main thread only)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self)
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._wakeup = (reader, writer)
        return self

    def seen(self) -> int:
        """The stop signal, if any, as seen from any thread (reads the wakeup socket)."""
        if self.signal or self._wakeup is None:
            return self.signal
        try:
            data = self._wakeup[0].recv(64)
        except (BlockingIOError, InterruptedError):
            return 0
        stops = [b for b in data if b in STOP_SIGNALS]
        if stops:
            self.signal = stops[0]
        return self.signal

    def ignore_further(self) -> None:
        """After the checkpoint: a repeated signal (srun sends more) must not kill the exit path."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
