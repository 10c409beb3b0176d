"""Stop requests (SIGTERM, SIGUSR1: SLURM time limits and preemption; SIGINT: Ctrl-C, which
``mpiexec`` passes on) for ``krum-mpi run``.

The handlers are installed first thing, before NumPy, h5py or MPI are imported: a rank that got
the signal during those imports (about half a second) used to die of it, and the MPI launcher then
ended the job with its own status (15, or 9 for the ranks it killed) instead of 3. This module
imports nothing heavy for that reason.

The handler only records the signal; the training loop checks the record once per step. Python
runs handlers in the main thread between bytecodes, so while the main thread is blocked in an MPI
call (a rank that never answers), the record stays unset. The C-level handler also writes the
signal number to a wakeup pipe, which the watchdog thread reads: it sees the stop even then.

Exit statuses stay distinct: a stop gives 3 (checkpoint saved); SIGQUIT, whose number is 3 and
which ``mpiexec`` would otherwise report as status 3, ends the process at once with 131 (128 + 3,
as a shell reports it), keeping the last flush; once a run is complete (or its checkpoint is
saved) further signals are ignored, so a signal that comes late cannot turn a finished run into a
failure (``ignore_further``).

What is left is the interpreter's own start (0.13-0.24 s measured on a loaded machine), before any
code of ours runs. krum-mpi closes it where it starts the ranks itself: each rank is started as
``env --block-signal=TERM --block-signal=INT --block-signal=USR1 python -m krum_mpi run ...``
(``krum_mpi.launch.rank_command``), so a stop signal that comes while Python starts stays pending
(a blocked signal survives ``exec``); ``install`` unblocks the stop signals once the handlers are in
place, and the pending signal becomes a recorded stop like any other. Every other way in unblocks
them too (``unblock_stops``): no krum-mpi process, nor any child it starts, keeps them blocked.
"""
from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_QUIT = 128 + signal.SIGQUIT      # not 3, the status of a stop with a checkpoint
_PROCESS = None                       # the process's StopRequest, once installed


def quit_now(signum=None, frame=None) -> None:
    """SIGQUIT: leave at once (the files on disk are whole: the last flush and checkpoint stay)."""
    os._exit(EXIT_QUIT)


def unblock_stops() -> None:
    """Deliver the stop signals again in this thread (and the threads and processes it starts later):
    a rank started with them blocked (``krum_mpi.launch.rank_command``) keeps them pending until
    here. Every path of ``krum-mpi`` calls it: the handlers' install, and the CLI for every other
    command, which has no handler and must end on a stop signal as any program does."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def process_stop() -> "StopRequest":
    """The StopRequest of this process, installed on the first call (``python -m krum_mpi run``
    calls it before anything else is imported, the CLI again later: one handler, no signal lost)."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = StopRequest().install()
    return _PROCESS


class StopRequest:
    """The stop signal received (0: none). Callable, so it can be a signal handler itself."""

    def __init__(self):
        self.signal = 0
        self._wakeup = None     # (reader, writer) pipe ends once installed

    def __call__(self, signum, frame=None):
        self.signal = signum

    def install(self) -> "StopRequest":
        """Handle SIGTERM, SIGUSR1, SIGINT and SIGQUIT from now on (main thread only)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self)
        signal.signal(signal.SIGQUIT, quit_now)
        reader, writer = os.pipe()      # a pipe, not a socket pair: importing socket took 20-30 ms of start-up
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        self._wakeup = (reader, writer)
        unblock_stops()     # a signal kept pending since the rank started is delivered now, to the handler
        return self

    def seen(self) -> int:
        """The stop signal, if any, as seen from any thread (reads the wakeup pipe)."""
        if self.signal or self._wakeup is None:
            return self.signal
        try:
            data = os.read(self._wakeup[0], 64)
        except (BlockingIOError, InterruptedError):
            return 0
        if signal.SIGQUIT in data:
            quit_now()
        stops = [b for b in data if b in STOP_SIGNALS]
        if stops:
            self.signal = stops[0]
        return self.signal

    def ignore_further(self) -> None:
        """After the checkpoint, or once the run is complete: a repeated or late signal (srun sends
        more) must not kill the exit path. SIG_IGN, unlike a Python handler, stays in place while
        the interpreter shuts down (MPI_Finalize runs after Python's own handlers are gone)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
