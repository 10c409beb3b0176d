"""The progress line (krum_mpi.run.progress): a bar on a terminal, lines in a log, nothing when quiet."""
import io

from krum_mpi.run.progress import Progress, choose_mode


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_every_interval_and_at_the_end(monkeypatch):
    monkeypatch.delenv("KRUM_MPI_PROGRESS", raising=False)
    out = io.StringIO()
    bar = Progress(10, "train", stream=out, every_s=0)
    for step in range(10):
        bar.update(step + 1, loss=0.5, acc=float("nan") if step < 9 else 0.875)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in out.getvalue()
    assert lines[-1].startswith("train: 10/10 steps (100.0%)")
    assert "loss 0.5" in lines[-1] and "acc 0.875" in lines[-1] and "step/s" in lines[-1] and "ETA" in lines[-1]
    assert "acc" not in lines[0]          # no accuracy measured yet: none shown


def test_a_terminal_gets_one_line_redrawn(monkeypatch):
    monkeypatch.delenv("KRUM_MPI_PROGRESS", raising=False)
    out = Terminal()
    bar = Progress(4, "bench", unit="timing", stream=out)
    bar.update(1)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1


def test_quiet_and_forced_modes(monkeypatch):
    out = io.StringIO()
    bar = Progress(3, "train", stream=out, quiet=True, every_s=0)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
    monkeypatch.setenv("KRUM_MPI_PROGRESS", "bar")
    assert choose_mode(io.StringIO()) == "bar"
    monkeypatch.setenv("KRUM_MPI_PROGRESS", "off")
    assert choose_mode(Terminal()) == "off"


def test_bytes_in_megabytes():
    out = io.StringIO()
    bar = Progress(2_000_000, "x.gz", unit="B", stream=out, start=0)
    bar.update(1_000_000)
    bar.close()
    assert "1.0/2.0 MB (50.0%)" in out.getvalue() and "MB/s" in out.getvalue()
