"""The watchdog ends a hung run even when its last flush fails (a full disk must not keep it alive)."""
import threading

from krum_mpi.errors import ResultsError
from krum_mpi.run.steps import Watchdog


class FullDiskWriter:
    """A results writer whose every flush fails as a full disk does (one ResultsError line)."""
    path = "results/hung.h5"
    done = 12

    def __init__(self):
        self.flushes = []

    def flush(self, status):
        self.flushes.append(status)
        raise ResultsError("cannot write results/hung.h5: No space left on device")


class AbortRecorder:
    """Stands in for Comm.abort only: the real one ends the process (tested under mpiexec in
    test_silent_workers.py::test_watchdog_ends_a_hung_run_with_a_message)."""

    def __init__(self):
        self.code = None
        self.called = threading.Event()

    def abort(self, code):
        self.code = code
        self.called.set()


def test_a_failed_flush_does_not_keep_the_watchdog_from_ending_the_run(capfd):
    writer, comm = FullDiskWriter(), AbortRecorder()
    dog = Watchdog(0.2, writer, comm, None)
    dog.start()
    assert comm.called.wait(10), "the watchdog never ended the run"
    dog.join(5)
    assert comm.code == 4 and writer.flushes == ["failed"]
    err = capfd.readouterr().err
    assert "No space left on device" in err and "no step finished for 0.2 s after step 11" in err
