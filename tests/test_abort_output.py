"""An abort's last line reaches the user: before MPI_Abort lets the process manager kill every
rank, the rank waits until its output pipe has been read (tests/test_silent_workers.py runs the
watchdog's abort through a real mpiexec)."""
import os
import threading
import time

from krum_mpi.parallel.drain import wait_until_output_is_read


def test_waits_for_a_reader_to_drain_the_pipe():
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"krum-mpi: error: the last line\n")
        drained_at = []

        def slow_reader():
            time.sleep(0.3)
            os.read(read_end, 4096)
            drained_at.append(time.monotonic())

        reader = threading.Thread(target=slow_reader)
        t0 = time.monotonic()
        reader.start()
        assert wait_until_output_is_read(5.0, fds=(write_end,)) is True
        returned_at = time.monotonic()
        reader.join()
        assert drained_at and returned_at >= drained_at[0], "returned before the line was read"
        assert returned_at - t0 < 4.0, "waited past the drain"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_gives_up_at_its_limit_when_nobody_reads():
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"unread\n")
        t0 = time.monotonic()
        assert wait_until_output_is_read(0.3, fds=(write_end,)) is False
        assert 0.3 <= time.monotonic() - t0 < 3.0
    finally:
        os.close(read_end)
        os.close(write_end)


def test_output_that_is_not_a_pipe_has_nothing_to_wait_for(tmp_path):
    with open(tmp_path / "log", "w") as log:
        log.write("line\n")
        log.flush()
        assert wait_until_output_is_read(5.0, fds=(log.fileno(),)) is True
